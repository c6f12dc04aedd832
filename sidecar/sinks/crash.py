"""The crash ledger: decisions answered against decisions handed to the stream, kept across a SIGKILL.

The data plane adds each call's row count as it answers; the spool adds one for a
decision event (or a gap record's count of decisions) once the record is written.
Both are stores into a small memory-mapped file in the spool directory: the dirty
page of a shared mapping belongs to the kernel, so what the process stored survives
the process being killed (SIGKILL, the OOM killer). It does not survive the machine
losing power: the page is never fsynced (a power loss also takes the spool's
unsynced tail, under `spool.fsync = "never"`).

At start, answered minus handed is what the previous run answered and never handed
over (the decisions of its last poll window, still in the queue when it died): the
sink notes them in a gap record, reason `crashed` (or `closed` when the previous run
did shut down but could not write its last gap records), with a time range and no
decision ids (`decision_ids_complete` false). Writing that gap record credits them,
so a second crash before it is written reports them again, never twice.

A record's write and the count after it cannot be one step, so the spool announces
each counted record first (its sequence number, the count before it, its decisions)
and then writes it; at start the announced record counts if the recovered spool's
next sequence number is past it. Whenever the kill lands, each decision is counted
exactly once.

The counters are cumulative over runs. A stage retried after a failure may write a
decision twice and so credit it twice; the surplus is dropped at the next start.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sidecar.sinks.crash")

FILE_NAME = "crash-ledger"
SIZE = 4096  # one page
_MAGIC = int.from_bytes(b"SCLEDG01", "little")
# Slots of the int64 ('q') view; LAST_ANSWER and HANDED_UNTIL are read through the float ('d') view.
MAGIC, STATE, ANSWERED, HANDED, PENDING_SEQ, PENDING_BASE, PENDING_N = range(7)
LAST_ANSWER = 7  # unix seconds: when the last call with decisions arrived
HANDED_UNTIL = 8  # unix seconds: every decision answered before it was handed over
_RUNNING, _CLEAN = 1, 0


def detached() -> tuple[memoryview[int], memoryview[float]]:
    """Counters that go nowhere: what the pipeline counts into when no ledger is open."""
    buf = bytearray(SIZE)
    return memoryview(buf).cast("q"), memoryview(buf).cast("d")


@dataclass(frozen=True, slots=True)
class Loss:
    """What the previous run answered and never handed over."""

    decisions: int
    first: float  # decisions answered before it were handed over
    last: float  # when the last answered call arrived
    clean: bool  # the previous run shut down (and still could not write everything)

    @property
    def reason(self) -> str:
        return "closed" if self.clean else "crashed"


class CrashLedger:
    """One file per spool directory; the spool's directory lock keeps it to one process."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE_NAME
        self._map: mmap.mmap | None = None
        self.counts: memoryview[int]
        self.times: memoryview[float]
        self.counts, self.times = detached()

    def open(self, spool_next_seq: int) -> Loss | None:
        """Map the file (created when missing), settle the previous run's account, mark running.

        `spool_next_seq` is the recovered spool's next sequence number: an announced record
        below it was written. Returns the previous run's loss, if any.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != SIZE:
                os.ftruncate(fd, 0)  # a torn or foreign file: start a fresh account
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file
        q: memoryview[int] = memoryview(self._map).cast("q")
        d: memoryview[float] = memoryview(self._map).cast("d")
        loss = None
        if q[MAGIC] != _MAGIC:
            q[MAGIC] = _MAGIC
            q[ANSWERED] = q[HANDED] = q[PENDING_N] = 0
        else:
            if q[PENDING_N] > 0:
                written = spool_next_seq > q[PENDING_SEQ]
                q[HANDED] = q[PENDING_BASE] + (q[PENDING_N] if written else 0)
                q[PENDING_N] = 0
            lost = q[ANSWERED] - q[HANDED]
            if lost > 0:
                loss = Loss(lost, d[HANDED_UNTIL], d[LAST_ANSWER], q[STATE] == _CLEAN)
                log.error(
                    "the previous run answered %d decisions it never handed to the sink (%s)",
                    lost,
                    "it crashed" if loss.reason == "crashed" else "lost at shutdown",
                )
            # What is lost is credited when its gap record is written; a surplus goes.
            q[HANDED] = q[ANSWERED] - max(lost, 0)
        d[HANDED_UNTIL] = time.time()
        q[STATE] = _RUNNING
        self.counts, self.times = q, d
        return loss

    @property
    def opened(self) -> bool:
        return self._map is not None

    # -- the spool's side: announce, write, then commit or abort --------

    def begin(self, seq: int, decisions: int) -> None:
        q = self.counts
        q[PENDING_SEQ] = seq
        q[PENDING_BASE] = q[HANDED]
        q[PENDING_N] = decisions  # last: until it is set, nothing is announced

    def commit(self) -> None:
        q = self.counts
        q[HANDED] = q[PENDING_BASE] + q[PENDING_N]
        q[PENDING_N] = 0

    def abort(self) -> None:
        self.counts[PENDING_N] = 0

    def close(self) -> None:
        """Mark the shutdown clean. The mapping stays until collected: the pipeline may still hold its view."""
        if self._map is None:
            return
        self.counts[STATE] = _CLEAN
        self._map.flush()
