"""The on-disk spool: every event is appended here before anything else sees it.

Layout: a directory of segment files named by the sequence number of their
first record and a checkpoint file naming the first record the broker has not
acknowledged yet; their bytes are `spool_format`'s. A segment is deleted once
every record in it is acknowledged, so what is on disk is what may still need
sending; the bound (`max_bytes`) is on those files.

The append is a single `os.write` of the whole record: once it returns the
record is in the kernel's page cache and survives the process being killed;
`fsync` decides what survives the machine losing power. New records always go
to a segment of the current format version: a segment of the previous release
is replayed as it is, never appended to, and deleted once acknowledged like any
other; a spool of a version this sidecar does not read is refused at start,
before anything in the directory is changed.

A torn or corrupt stretch (a crash mid-write, a bad disk block) is skipped by
scanning for the next valid header; it is counted and never stops the sidecar.
A damaged segment header is such a stretch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

import orjson

from sidecar.metrics import Registry
from sidecar.sinks.crash import CrashLedger
from sidecar.sinks.spool_format import (
    CHECKPOINT,
    FORMAT_VERSION,
    HEADER,
    MAX_PAYLOAD,
    PAYLOAD,
    SEGMENT_HEADER,
    SUFFIX,
    Position,
    Record,
    SegmentKind,
    SpoolError,
    checkpoint_bytes,
    classify,
    encode,
    needed,
    parse_at,
    parse_checkpoint,
    read_head,
    resync,
    segment_header,
    segment_name,
)

log = logging.getLogger("sidecar.sinks.spool")

_CHECKPOINT_EVERY_S = 0.05
_CHUNK = 1024 * 1024  # bytes read at a time: keeps memory flat while replaying a backlog

FsyncPolicy = Literal["never", "interval", "always"]
FullPolicy = Literal["drop_newest", "block"]


# Told of every event the spool does not keep: (reason, kind, key); the gap ledger listens.
OnDrop = Callable[[str, str, str], None]
# While the disk fails under the block policy, how long a publisher waits before trying again.
_ERROR_RETRY_S = 0.5


class SpoolBusy(SpoolError):
    """Another process holds the spool directory."""


class Spool:
    """Append from any thread, read and acknowledge from one delivery thread."""

    def __init__(
        self,
        directory: Path,
        registry: Registry,
        *,
        max_bytes: int,
        segment_bytes: int,
        on_full: FullPolicy = "drop_newest",
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 0.2,
        on_drop: OnDrop | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # Whole segments are freed, so a segment must be small next to the bound.
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4))
        self.on_full = on_full
        self.fsync_policy = fsync
        self._fsync_interval_s = fsync_interval_s
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # writers waiting for room (block policy)
        self._data = threading.Condition(self._lock)  # the reader waiting for records
        self._closed = False
        self._refusing = False  # shutting down: only forced records (gap records) are taken
        self._stop = threading.Event()  # wakes the fsync thread at close
        self._segments: dict[int, int] = {}  # first seq -> size in bytes
        self._starts: dict[int, int] = {}  # first seq -> offset of its first record
        self._bytes = 0
        self._fd = -1
        self._active = 0  # first seq of the segment being written
        self._end = 0  # bytes in the active segment
        self._next_seq = 0
        self._first_new_seq = 0
        self._acked_seq = 0  # every seq below it is acknowledged
        self._acked_pos = Position(0, 0)
        self._checkpoint_at = 0.0
        self._dirty = False
        self._on_drop = on_drop
        self.mean_record_bytes = 1024.0
        # The last disk error (None once a write or fsync succeeds again): readiness reads it.
        self.disk_error: str | None = None
        self._read_pos = Position(0, 0)
        self._reader: tuple[int, BinaryIO] | None = None
        self._flusher: threading.Thread | None = None
        self.waiting = 0  # publishers blocked for room (block policy)
        self._lock_fd = -1
        # Set by the sink: counts the decisions each written record accounts for.
        self.crash: CrashLedger | None = None

        self.m_spooled = registry.counter(
            "sidecar_events_spooled_total", "Events appended to the spool"
        )
        self.m_dropped_full = registry.counter(
            "sidecar_events_dropped_total", "Events not kept, by reason", {"reason": "spool_full"}
        )
        self.m_dropped_closed = registry.counter(
            "sidecar_events_dropped_total", "Events not kept, by reason", {"reason": "closed"}
        )
        self.m_dropped_error = registry.counter(
            "sidecar_events_dropped_total", "Events not kept, by reason", {"reason": "spool_error"}
        )
        self.m_disk_errors = {
            op: registry.counter(
                "sidecar_spool_disk_errors_total",
                "Disk errors on the spool (EIO, ENOSPC, EACCES, ...), by operation",
                {"op": op},
            )
            for op in ("append", "fsync", "read", "remove")
        }
        self.m_corrupt = registry.counter(
            "sidecar_spool_corrupt_total",
            "Corrupt or torn stretches of the spool skipped (at start or while reading)",
        )
        self.m_corrupt_bytes = registry.counter(
            "sidecar_spool_corrupt_bytes_total", "Bytes of the spool skipped as corrupt or torn"
        )
        self.m_blocked = registry.counter(
            "sidecar_spool_blocked_seconds_total",
            "Time publishers spent waiting for room in the spool (block policy)",
        )
        registry.gauge(
            "sidecar_spool_blocked_publishers",
            "Publishers waiting for room in the spool (block policy)",
            fn=lambda: float(self.waiting),
        )
        registry.gauge("sidecar_spool_bytes", "Bytes of spool segments on disk", fn=self.bytes)
        registry.gauge(
            "sidecar_spool_lag_events",
            "Events in the spool not yet acknowledged by the broker",
            fn=lambda: float(self.lag()),
        )

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Recover what an earlier run left: truncate a torn tail, find the checkpoint.

        Raises SpoolBusy when another process holds the directory, SpoolFormatError when a
        file in it is of another format version; either leaves the directory as it was.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Two writers would interleave sequence numbers; the kernel drops the lock on exit.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolBusy(
                f"spool directory {self.directory} is in use by another running sidecar "
                "(give each one its own spool.directory)"
            ) from None
        try:
            self._recover()
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise
        if self.fsync_policy == "interval":
            self._flusher = threading.Thread(
                target=self._flush_loop, name="spool-fsync", daemon=True
            )
            self._flusher.start()
        pending = self._next_seq - self._acked_seq
        if pending > 0:
            log.info("spool: %d events from an earlier run to replay", pending)

    def _recover(self) -> None:
        firsts = sorted(
            int(p.name[: -len(SUFFIX)])
            for p in self.directory.glob("*" + SUFFIX)
            if p.name[: -len(SUFFIX)].isdigit()
        )
        # Every file is checked before anything is changed, so a refused spool stays as it was.
        ckpt = self._load_checkpoint()
        kinds: dict[int, SegmentKind] = {}
        for first in firsts:
            path = self.directory / segment_name(first)
            kinds[first], self._starts[first] = classify(path, read_head(path))
            self._segments[first] = path.stat().st_size
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        legacy = sum(k == "legacy" for k in kinds.values())
        if legacy:
            log.info(
                "spool: %d segments without a format header (written before version %d): "
                "replaying them as they are; new events go to versioned segments",
                legacy,
                FORMAT_VERSION,
            )
        for first, kind in kinds.items():
            if kind == "damaged":
                self._skip_damaged_header(first)
        if firsts:
            last = firsts[-1]
            end, self._next_seq = self._recover_tail(last)
            if kinds[last] == "current":
                self._fd = os.open(self.directory / segment_name(last), os.O_WRONLY | os.O_APPEND)
                self._active, self._end = last, end
            else:
                # Never append to a headerless segment: new records go to a versioned one.
                if end == self._starts[last]:  # nothing valid in it: the new one takes its name
                    self._segments.pop(last)
                    (self.directory / segment_name(last)).unlink()
                else:
                    self._next_seq = max(self._next_seq, last + 1)
                self._create_segment()
        else:
            self._next_seq = ckpt[0] if ckpt else 0
            self._create_segment()
        self._first_new_seq = self._next_seq
        # A segment is named by its first seq, so its start is a known acknowledgement point.
        start = self._start_of(min(self._segments))
        start_seq = start.segment
        if ckpt is not None and self._checkpoint_holds(
            *ckpt, kinds.get(ckpt[1].segment) == "damaged"
        ):
            start_seq, start = ckpt
        for first in [f for f in self._segments if f < start.segment]:
            self._remove_segment(first)
        self._bytes = sum(self._segments.values())
        self._acked_seq, self._acked_pos = start_seq, start
        self._read_pos = start

    def _skip_damaged_header(self, first: int) -> None:
        """Start a segment whose header is damaged at its first valid record; count what is skipped."""
        buf = (self.directory / segment_name(first)).read_bytes()
        start = 0  # a headerless file whose first record is not its own: nothing to skip
        if parse_at(buf, 0) is None:
            skip = resync(buf, 0)
            start = len(buf) if skip is None else skip
        self._starts[first] = start
        self.m_corrupt.inc()
        self.m_corrupt_bytes.inc(start)
        log.warning(
            "spool: segment %s has no valid header (damaged, truncated or foreign); "
            "skipped %d bytes to its first valid record",
            segment_name(first),
            start,
        )

    def _checkpoint_holds(self, seq: int, pos: Position, damaged: bool) -> bool:
        """Whether replay may start at the checkpoint (else it starts at the first segment)."""
        size = self._segments.get(pos.segment)
        if size is None or not self._starts[pos.segment] <= pos.offset <= size:
            return False
        if not damaged or pos.offset == size:
            return True
        # Bytes lost from a damaged segment would shift its records: the checkpoint must
        # still name the record it was written for, or it could skip one never sent.
        buf = self._read_bytes(pos.segment, pos.offset, HEADER.size + MAX_PAYLOAD)
        self._close_reader()
        rec = parse_at(buf, 0)
        return rec is not None and rec.seq == seq

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._space.notify_all()
            self._data.notify_all()
        if self._flusher is not None:
            self._flusher.join(2.0)
        with self._lock:
            if self._fd >= 0:
                if self.fsync_policy != "never":
                    try:
                        os.fsync(self._fd)
                    except OSError:
                        self.m_disk_errors["fsync"].inc()
                        log.exception("spool: fsync at close failed")
                os.close(self._fd)
                self._fd = -1
            self._write_checkpoint()
            self._close_reader()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def stop_writers(self, timeout_s: float = 2.0) -> None:
        """Shutting down with publishers stuck: refuse (and report) all but forced records from now.

        Returns once the publishers waiting for room have given up (or after `timeout_s`).
        """
        with self._lock:
            self._refusing = True
            self._space.notify_all()
            self._space.wait_for(lambda: self.waiting == 0, timeout_s)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- writing ---------------------------------------------------------

    def append(
        self,
        kind: str,
        key: str,
        event_id: str,
        time_: str,
        body: bytes,
        *,
        force: bool = False,
        reserved: bool = False,
        counted: int = 0,
    ) -> bool:
        """Append one event; False when it was dropped (spool full under drop_newest, disk error, closed).

        `force` writes past `max_bytes` (gap records: small, and the only trace of a loss);
        `reserved` may use a reserve of max_bytes/8 beyond it (review events: the audit
        trail, and a held answer's review must not wait behind a full spool). `counted`
        is how many answered decisions the record accounts for, credited in the crash
        ledger (when one is attached) exactly when the record is written.
        """
        size = HEADER.size + PAYLOAD.size + len(key) + len(event_id) + len(time_) + len(body)
        bound = self.max_bytes + (self.max_bytes // 8 if reserved else 0)
        with self._lock:
            if self._closed or (self._refusing and not force):
                self.m_dropped_closed.inc()
                self._dropped("closed", kind, key)
                return False
            if not force and self._bytes + size > bound:
                if self.on_full == "drop_newest":
                    self.m_dropped_full.inc()
                    self._dropped("spool_full", kind, key)
                    return False
                if not self._wait_for_room(size, bound):
                    self.m_dropped_closed.inc()
                    self._dropped("closed", kind, key)
                    return False
            crash = self.crash if counted else None
            while True:
                try:
                    if crash is not None:
                        crash.begin(self._next_seq, counted)
                    self._write(encode(self._next_seq, kind, key, event_id, time_, body))
                    self.disk_error = None
                    break
                except OSError as exc:
                    if crash is not None:
                        crash.abort()
                    self.m_disk_errors["append"].inc()
                    first = self.disk_error is None
                    self.disk_error = f"append: {exc}"
                    if first:
                        log.exception("spool: append failed (%s)", self.on_full)
                    # The configured policy applies to a failing disk as to a full one.
                    if force or self.on_full == "drop_newest":
                        self.m_dropped_error.inc()
                        self._dropped("spool_error", kind, key)
                        return False
                    self._space.wait(_ERROR_RETRY_S)
                    if self._closed or self._refusing:
                        self.m_dropped_closed.inc()
                        self._dropped("closed", kind, key)
                        return False
            if crash is not None:
                crash.commit()
            self.m_spooled.inc()
            return True

    def _wait_for_room(self, size: int, bound: int) -> bool:
        """Block policy: wait (lock held by the condition) until `size` fits; False when closed."""
        waited = time.perf_counter()
        self.waiting += 1
        while self._bytes + size > bound and not (self._closed or self._refusing):
            self._space.wait(0.5)
        self.waiting -= 1
        self._space.notify_all()  # stop_writers waits for the waiters to be gone
        self.m_blocked.inc(time.perf_counter() - waited)
        return not (self._closed or self._refusing)

    def _dropped(self, reason: str, kind: str, key: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason, kind, key)

    def has_room(self, size: int) -> bool:
        """Whether an event of `size` bytes would be kept now (the reject policy asks before forwarding)."""
        return (
            not self._closed
            and self.disk_error is None
            and self.waiting == 0
            and self._bytes + size <= self.max_bytes
        )

    def _write(self, rec: bytes) -> None:
        # The active segment is always a versioned one: past its header it holds a record.
        if self._end > SEGMENT_HEADER.size and self._end + len(rec) > self.segment_bytes:
            self._rotate()
        try:
            written = os.write(self._fd, rec)
            while written < len(rec):
                written += os.write(self._fd, rec[written:])
        except OSError:
            # Leave no torn record behind for the reader to trip over.
            os.ftruncate(self._fd, self._end)
            raise
        if self.fsync_policy == "always":
            os.fsync(self._fd)
        self._end += len(rec)
        # A running mean of record sizes: the reject policy sizes the room it asks for with it.
        self.mean_record_bytes += (len(rec) - self.mean_record_bytes) / 64
        self._segments[self._active] = self._end
        self._bytes += len(rec)
        self._next_seq += 1
        self._dirty = True
        self._data.notify()

    def _rotate(self) -> None:
        if self.fsync_policy != "never":
            os.fsync(self._fd)
        old = self._fd
        self._create_segment()  # if this fails the full segment stays active: nothing is torn
        os.close(old)

    def _create_segment(self) -> None:
        """Start the segment whose first record is the next one, header first."""
        first = self._next_seq
        # O_EXCL: a segment is never started over an existing file, whatever is in it.
        fd = os.open(
            self.directory / segment_name(first),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
            0o644,
        )
        head = segment_header(first)
        try:
            if os.write(fd, head) != len(head):
                raise OSError(f"short write of the header of {segment_name(first)}")
        except OSError:
            os.close(fd)
            # Empty or torn, it holds no record: leave no file the next start must puzzle over.
            (self.directory / segment_name(first)).unlink(missing_ok=True)
            raise
        self._fd, self._active, self._end = fd, first, len(head)
        self._segments[first] = self._starts[first] = len(head)
        self._bytes += len(head)

    def _flush_loop(self) -> None:
        try:
            while not self._stop.wait(self._fsync_interval_s):
                self._flush_once()
        except Exception:
            log.exception("spool: the fsync thread failed; durability is no longer assured")
            raise

    def _flush_once(self) -> None:
        with self._lock:
            if not self._dirty or self._fd < 0:
                return
            self._dirty = False
            # A private descriptor: a rotation may close the shared one meanwhile.
            fd = os.dup(self._fd)
        try:
            # Outside the lock, so appends go on while the disk syncs.
            os.fsync(fd)
            if self.disk_error is not None and self.disk_error.startswith("fsync"):
                self.disk_error = None
        except OSError as exc:
            # Counted, logged once per episode, reported by readiness; tried again next round.
            self.m_disk_errors["fsync"].inc()
            if self.disk_error is None:
                log.exception("spool: fsync failed; what is spooled may not survive a power loss")
            self.disk_error = f"fsync: {exc}"
            with self._lock:
                self._dirty = True
        finally:
            os.close(fd)

    def fsync_alive(self) -> bool:
        """True unless the interval policy's fsync thread has died."""
        return self._flusher is None or self._flusher.is_alive() or self._closed

    # -- reading (one delivery thread) ----------------------------------

    def read(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to `max_records` records from the read position; waits up to `timeout_s` for one."""
        with self._lock:
            if not self._has_unread() and not self._closed:
                self._data.wait(timeout_s)
            pos = self._read_pos
            limit = self._segments.get(pos.segment)
            if limit is None:  # its segment was deleted (all acked): go to the next
                later = [s for s in self._segments if s > pos.segment]
                if not later:
                    return []
                pos = self._read_pos = self._start_of(min(later))
                limit = self._segments[pos.segment]
            nxt = min((s for s in self._segments if s > pos.segment), default=None)
            if pos.offset >= limit:
                if pos.segment != self._active and nxt is not None:
                    self._read_pos = self._start_of(nxt)
                return []
        buf = self._read_bytes(pos.segment, pos.offset, min(limit - pos.offset, _CHUNK))
        if self.disk_error is not None and self.disk_error.startswith("read"):
            self.disk_error = None
        whole = pos.offset + len(buf) >= limit  # the chunk reaches the end of what is written
        out: list[Record] = []
        off = 0
        seg, base, first_new = pos.segment, pos.offset, self._first_new_seq
        while off < len(buf) and len(out) < max_records:
            parsed = parse_at(buf, off)
            if parsed is None:
                need = needed(buf, off)
                if need is not None and not whole:
                    if off == 0:  # one record larger than a chunk
                        buf = self._read_bytes(pos.segment, pos.offset, need)
                        whole = pos.offset + len(buf) >= limit
                        continue
                    break  # a record straddles the chunk: the next read starts at it
                skip = resync(buf, off)
                if skip is None:
                    skip = len(buf) - off
                self.m_corrupt.inc()
                self.m_corrupt_bytes.inc(skip)
                log.warning(
                    "spool: skipped %d corrupt bytes in segment %d at offset %d",
                    skip,
                    pos.segment,
                    pos.offset + off,
                )
                off += skip
                continue
            parsed.pos = Position(seg, base + off)
            parsed.replay = parsed.seq < first_new
            out.append(parsed)
            off = parsed.end
        with self._lock:
            self._read_pos = Position(pos.segment, pos.offset + off)
        return out

    def _read_bytes(self, segment: int, offset: int, want: int) -> bytes:
        reader = self._reader
        if reader is None or reader[0] != segment:
            self._close_reader()
            f = open(self.directory / segment_name(segment), "rb")  # noqa: SIM115
            self._reader = reader = (segment, f)
        reader[1].seek(offset)
        return reader[1].read(want)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader[1].close()
            self._reader = None

    def _has_unread(self) -> bool:
        pos = self._read_pos
        size = self._segments.get(pos.segment)
        if size is None:
            return any(s > pos.segment for s in self._segments)
        return pos.offset < size or pos.segment != self._active

    def read_failed(self, exc: OSError) -> None:
        """The delivery thread could not read: counted, logged once per episode, reported."""
        self.m_disk_errors["read"].inc()
        if self.disk_error is None or not self.disk_error.startswith("read"):
            log.error("spool: read failed (%s); delivery waits for the disk", exc)
        self.disk_error = f"read: {exc}"

    def wake_reader(self) -> None:
        """Wake a `read` waiting for records (the delivery thread has acknowledgements to handle)."""
        with self._lock:
            self._data.notify_all()

    def unread(self) -> bool:
        """True while records past the read position wait to be read."""
        with self._lock:
            return self._has_unread()

    def rewind(self, pos: Position) -> None:
        """Read again from `pos` (the first unacknowledged record after a delivery error)."""
        with self._lock:
            self._read_pos = pos

    # -- acknowledgement --------------------------------------------------

    def acknowledge(self, next_seq: int, pos: Position | None) -> None:
        """Everything below `next_seq` is acknowledged; `pos` is where it starts (None: at the end)."""
        with self._lock:
            if pos is None:
                pos = self._read_pos
            self._acked_seq, self._acked_pos = next_seq, pos
            freed = False
            for first in [s for s in self._segments if s < pos.segment and s != self._active]:
                self._remove_segment(first)
                freed = True
            if freed:
                self._bytes = sum(self._segments.values())
            self._space.notify_all()
            now = time.monotonic()
            if now - self._checkpoint_at >= _CHECKPOINT_EVERY_S:
                self._checkpoint_at = now
                self._write_checkpoint()

    def _remove_segment(self, first: int) -> None:
        if self._reader is not None and self._reader[0] == first:
            self._close_reader()
        try:
            (self.directory / segment_name(first)).unlink(missing_ok=True)
        except OSError as exc:
            # Acknowledged all the same: a start after this skips it (below the checkpoint).
            self.m_disk_errors["remove"].inc()
            log.error("spool: could not delete acknowledged segment %s: %s", first, exc)
        self._segments.pop(first, None)
        self._starts.pop(first, None)

    def _start_of(self, segment: int) -> Position:
        return Position(segment, self._starts[segment])

    def _write_checkpoint(self) -> None:
        data = checkpoint_bytes(self._acked_seq, self._acked_pos)
        tmp = self.directory / (CHECKPOINT + ".tmp")
        try:
            tmp.write_bytes(data)
            # Losing the checkpoint only means re-sending (at least once), so no fsync here.
            os.replace(tmp, self.directory / CHECKPOINT)
        except OSError:
            log.exception("spool: could not write the checkpoint")

    def _load_checkpoint(self) -> tuple[int, Position] | None:
        path = self.directory / CHECKPOINT
        try:
            return parse_checkpoint(path, path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            self.m_corrupt.inc()
            log.warning("spool: checkpoint %s unreadable; replaying every segment", path)
            return None

    def _recover_tail(self, first: int) -> tuple[int, int]:
        """(valid end, next seq) of the last segment; a torn or corrupt tail is cut off."""
        path = self.directory / segment_name(first)
        buf = path.read_bytes()
        off = good_end = self._starts[first]
        next_seq = first
        while off < len(buf):
            parsed = parse_at(buf, off)
            if parsed is None:
                skip = resync(buf, off)
                if skip is None:
                    break
                off += skip  # kept: the reader skips and counts it when it gets there
                continue
            next_seq = max(next_seq, parsed.seq + 1)
            off = good_end = parsed.end
        if good_end < len(buf):
            self.m_corrupt.inc()
            self.m_corrupt_bytes.inc(len(buf) - good_end)
            log.warning(
                "spool: cut %d torn bytes from the end of %s", len(buf) - good_end, path.name
            )
            with open(path, "r+b") as f:
                f.truncate(good_end)
        self._segments[first] = good_end
        return good_end, next_seq

    # -- state ------------------------------------------------------------

    def bytes(self) -> float:
        return float(self._bytes)

    def lag(self) -> int:
        return self._next_seq - self._acked_seq

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    def wait_acked(self, seq: int, timeout_s: float) -> bool:
        """Wait until every record below `seq` is acknowledged (tests, shutdown)."""
        with self._lock:
            return self._space.wait_for(lambda: self._acked_seq >= seq, timeout_s)
