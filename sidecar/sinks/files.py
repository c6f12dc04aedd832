"""The embedded default sink: rotated JSON Lines files, one directory per topic.

JSON Lines rather than Parquet: the events handed over together (one pipeline
poll's worth) are one `write` of whole lines, so they are on disk (page cache)
the moment `publish_many` returns and a crash can tear at most the last line;
a Parquet file is unreadable until its footer is written at close, so a crash
would lose the whole open file, and buffering rows for row groups would hold
events in memory. JSON Lines also reads with `tail -f`,
`jq`, or `pyarrow.json.read_json` / DuckDB when columnar analysis is wanted.

Files are named by the UTC time they were opened (`20261123T101500.123456Z.jsonl`),
so names sort in time order; a new one starts past `rotate_bytes` or
`rotate_interval_s`, and only the newest `keep_files` per topic are kept.
A restart always opens a new file, never appends after a possibly torn line.

Each `SYNC_BYTES` written are made durable as they are written (`fdatasync`), and a
finished file whole at rotation (`fsync`): the rotation's flush finds at most that
much dirty data (a 64 MiB fsync took ~48 ms on this project's VM, on the sink's
thread with the file's lock held), and a power loss takes at most that much from
an open file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from sidecar.metrics import Registry
from sidecar.sinks import events
from sidecar.sinks.base import EventKind
from sidecar.sinks.gaps import GapLedger
from sidecar.sinks.stats import SinkStats

log = logging.getLogger("sidecar.sinks.files")

# Written bytes not yet made durable, at most (module doc).
SYNC_BYTES = 4 << 20


class RotatingFile:
    """Appends whole lines to the current file of one topic; rotates and prunes."""

    def __init__(self, directory: Path, rotate_bytes: int, rotate_interval_s: float, keep: int):
        self.directory = directory
        self._rotate_bytes = rotate_bytes
        self._rotate_interval_s = rotate_interval_s
        self._keep = keep
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._unsynced = 0
        self._opened = 0.0
        self.path: Path | None = None

    def write(self, lines: bytes) -> None:
        """Append whole lines in one write (rotating first when they would not fit)."""
        with self._lock:
            now = time.monotonic()
            if (
                self._fd < 0
                or self._size + len(lines) > self._rotate_bytes
                or now - self._opened >= self._rotate_interval_s
            ):
                self._open_next(now)
            n = os.write(self._fd, lines)
            while n < len(lines):
                n += os.write(self._fd, lines[n:])
            self._size += len(lines)
            self._unsynced += len(lines)
            if self._unsynced >= SYNC_BYTES:
                os.fdatasync(self._fd)
                self._unsynced = 0

    def _open_next(self, now: float) -> None:
        self._close_fd()
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{stamp}.jsonl"
        n = 0
        while path.exists():
            n += 1
            path = self.directory / f"{stamp}-{n}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        self.path, self._size, self._unsynced, self._opened = path, 0, 0, now
        self._prune()

    def _prune(self) -> None:
        files = sorted(self.directory.glob("*.jsonl"))
        for old in files[: max(0, len(files) - self._keep)]:
            old.unlink(missing_ok=True)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            # Rotation and close are rare: a finished file is made durable whole.
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        with self._lock:
            self._close_fd()


class FileSink:
    """Writes each event as one JSON line under `directory/<topic>/`."""

    def __init__(
        self,
        directory: Path,
        topics: dict[str, str],
        registry: Registry,
        *,
        rotate_bytes: int,
        rotate_interval_s: float,
        keep_files: int,
    ) -> None:
        self.directory = Path(directory)
        self._files = {
            kind: RotatingFile(self.directory / topic, rotate_bytes, rotate_interval_s, keep_files)
            for kind, topic in topics.items()
        }
        self._stats = SinkStats(registry)
        self._write_errors = self._stats.dropped("write_error")
        self._invalid = self._stats.dropped("invalid")
        self._closed = False
        self.gaps = GapLedger(registry)
        self._failing = False

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.gaps.start(lambda key, body: self.publish("gap", key, body))

    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        return self.publish_many(kind, ((key, body),)) == 1

    def publish_many(self, kind: EventKind, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        if not items:
            return 0
        self._stats.published[kind].inc(len(items))
        if self._closed:
            self._stats.dropped("closed").inc(len(items))
            self._lost("closed", kind, items)
            return 0
        lines = []
        for key, body in items:
            try:
                lines.append(events.dumps(body))
            except (TypeError, orjson.JSONEncodeError):
                self._invalid.inc()
                self._lost("invalid", kind, [(key, body)])
                log.warning("files sink: a %s event for %s is not JSON-serialisable", kind, key)
        if not lines:
            return 0
        lines.append(b"")
        try:
            self._files[kind].write(b"\n".join(lines))
        except OSError:
            self._write_errors.inc(len(lines) - 1)
            self._failing = True
            self._lost("spool_error", kind, items)
            log.exception("files sink: could not write %d %s events", len(lines) - 1, kind)
            return 0
        self._failing = False
        self._stats.acked.inc(len(lines) - 1)
        return len(lines) - 1

    def _lost(self, reason: str, kind: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if kind != "gap":  # a gap record that fails stays pending in the ledger
            self.gaps.note(reason, kind, len(items), [k for k, _ in items])

    def ready(self) -> bool:
        return not self._closed

    def has_room(self, pending: int = 0) -> bool:
        return not self._closed and not self._failing

    def health(self) -> dict[str, bool]:
        return {"gap_records": self.gaps.alive(), "files_writable": not self._failing}

    def refuse_new(self) -> None:
        pass  # nothing here waits

    def close(self, timeout_s: float = 5.0) -> None:
        self.gaps.close()
        self._closed = True
        for f in self._files.values():
            f.close()
