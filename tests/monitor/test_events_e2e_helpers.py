"""Reading a files-sink topic folder back, for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def events_of(folder: Path, topic: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    d = folder / topic
    for f in sorted(d.glob("*.jsonl")) if d.is_dir() else []:
        out += [orjson.loads(line) for line in f.read_bytes().splitlines() if line.strip()]
    return out
