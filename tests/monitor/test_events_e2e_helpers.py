"""Reading a files-sink topic folder back, for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.servers import jsonl_events


def events_of(folder: Path, topic: str) -> list[dict[str, Any]]:
    return jsonl_events(folder / topic)
