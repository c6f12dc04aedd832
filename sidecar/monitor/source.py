"""Reading events: the files sink's folder (once, or following it) and outcome files.

The files sink writes one folder per topic of JSON Lines files whose names sort
in time order. `FolderTail` remembers how far it has read each file, takes
only whole lines (a line being written is read next time), and skips lines
longer than `max_event_bytes` or that are not JSON objects, counting them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from sidecar.sinks.events import event_id

# Decisions first: events about a decision read after it join at once instead of waiting.
KINDS = ("decisions", "outcomes", "reviews", "explanations", "gaps")


class FolderTail:
    """Follows the JSON Lines files of each topic folder under `root`."""

    def __init__(self, root: Path, topics: dict[str, str], max_event_bytes: int) -> None:
        self.root = root
        self.topics = topics  # kind -> folder name
        self.max_event_bytes = max_event_bytes
        self.offsets: dict[str, int] = {}  # "topic/file.jsonl" -> bytes read
        self.invalid = 0

    def read(self) -> Iterator[dict[str, Any]]:
        """Every event appended since the last call, topic by topic."""
        listed: set[str] = set()
        for kind in KINDS:
            folder = self.root / self.topics[kind]
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.jsonl")):
                listed.add(path.relative_to(self.root).as_posix())
                yield from self._read_file(path)
        # Files the sink pruned: their offsets would only grow the checkpoint.
        for key in [k for k in self.offsets if k not in listed]:
            del self.offsets[key]

    def _read_file(self, path: Path) -> Iterator[dict[str, Any]]:
        # Relative to the root: offsets stored with a checkpoint hold wherever the folder is.
        key = path.relative_to(self.root).as_posix()
        start = self.offsets.get(key, 0)
        try:
            with path.open("rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:  # pruned by the sink between listing and reading
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offsets[key] = start + end + 1
        limit = self.max_event_bytes
        for line in data[: end + 1].split(b"\n"):
            if not line.strip():
                continue
            if len(line) > limit:
                self.invalid += 1
                continue
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.invalid += 1
                continue
            if isinstance(ev, dict):
                yield ev
            else:
                self.invalid += 1


def outcome_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Outcome events from a CSV, JSON Lines or Parquet file of decision_id, outcome, observed_at."""
    suffix = path.suffix.lower()
    rows: Iterator[dict[str, Any]]
    if suffix == ".csv":
        with path.open(newline="") as f:
            rows = iter(list(csv.DictReader(f)))
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = (orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip())
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = iter(pq.read_table(path).to_pylist())
    else:
        raise ValueError(f"{path}: outcomes are a .csv, .jsonl or .parquet file")
    for row in rows:
        if row.get("event_type") == "outcome":
            yield row
            continue
        did, observed = row.get("decision_id"), row.get("observed_at")
        yield {
            "event_type": "outcome",
            "event_id": row.get("event_id") or event_id(did, "outcome", observed),
            "decision_id": did,
            "outcome": row.get("outcome"),
            "observed_at": str(observed) if observed is not None else None,
            "source": str(path),
        }
