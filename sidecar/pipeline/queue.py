"""The bounded hand-off between the hot path and everything that happens after the response.

The data plane calls `submit` (a non-blocking put; a full queue sheds the
batch, counts it and notes it in the gap ledger, so a gap record tells
consumers which decisions they will not see). Under `on_overload = "reject"`
the data plane asks `admits` before it forwards a call and answers 503 when
the sidecar could not record the decision; what it admitted is never shed (the
queue may exceed its bound by the calls in flight). One background thread drains the queue and runs the
configured stages in order: sample, record, publish, explain, route to
review. Each stage gets every batch that arrived since the last poll, so a
sink writes a poll's events in one go and the lookup store takes its lock
once. A failing stage is logged and counted; it never stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.sinks.crash import ANSWERED, HANDED_UNTIL, LAST_ANSWER, detached
from sidecar.sinks.gaps import GapLedger

log = logging.getLogger("sidecar.pipeline.queue")


@dataclass(slots=True)
class Held:
    """The model's answer kept back from the client while a held decision awaits review."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True)
class Batch:
    """The decisions of one inference call, and what the request asked for."""

    decisions: list[Decision]
    explain_requested: bool = False
    held: Held | None = None
    # Set by whichever thread enqueued the batch's review items (the held lane or the stages).
    reviewed: bool = False


Stage = Callable[[list[Batch]], None]
# The consumer polls instead of being woken per batch: waking a thread on every
# put cost ~10 µs of the request's CPU (GIL hand-off); a poll batches them, and the
# stages run warm over a poll's batches. 50 ms took another 12-17 µs per request off,
# but answered decisions wait that long for the spool: a crash would lose twice as many.
POLL_S = 0.025
# Upper bound on one hand-off to the stages, so a backlog is worked through in steps.
MAX_DRAIN = 1024


class Pipeline:
    def __init__(
        self,
        queue_size: int,
        registry: Registry,
        stages: Sequence[tuple[str, Stage]],
        poll_s: float = POLL_S,
        *,
        gaps: GapLedger | None = None,
        on_overload: Literal["shed", "reject"] = "shed",
        sink_has_room: Callable[[int], bool] | None = None,
        held_stage: Stage | None = None,
    ):
        # Held batches are also handed to `held_stage` on a thread of their own, so a held
        # answer's ticket is readable even while the stages wait (spool.on_full = "block").
        self._held_stage = held_stage
        self._held: deque[Batch] = deque()
        self._held_bell = threading.Event()
        self._held_thread: threading.Thread | None = None
        self._gaps = gaps
        self.rejecting = on_overload == "reject"
        self._sink_has_room = sink_has_room
        self._queue: deque[Batch] = deque()
        self._poll_s = poll_s
        # A lock held by the pipeline is its doorbell: `acquire(timeout)` is one call into
        # C where Event.wait builds a Condition and a fresh lock on every poll (18 µs less per
        # poll on a cold cache, measured). Releasing it wakes the stages at once.
        self._bell = threading.Lock()
        self._bell.acquire()
        self._stopping = False
        self._limit = queue_size
        self._stages = list(stages)
        self._thread: threading.Thread | None = None
        self._submitted = registry.counter(
            "sidecar_decisions_total", "Decisions made (one per row of a recognised call)"
        )
        self._shed = registry.counter(
            "sidecar_decisions_shed_total",
            "Decisions dropped because the background queue was full",
        )
        registry.gauge(
            "sidecar_decision_queue_depth",
            "Batches waiting for the background stages",
            fn=lambda: float(len(self._queue)),
        )
        self._failures = {
            name: registry.counter(
                "sidecar_stage_failures_total", "Stage errors (logged)", {"stage": name}
            )
            for name in [n for n, _ in self._stages] + ["held-review"]
        }
        self._rejected = registry.counter(
            "sidecar_decisions_rejected_total",
            "Inference calls answered 503 before forwarding (decisions.on_overload = reject)",
        )
        registry.gauge(
            "sidecar_thread_alive",
            "1 while the thread runs",
            {"thread": "decision-pipeline"},
            fn=lambda: 1.0 if self.alive() else 0.0,
        )
        # Decisions submitted and decisions through the stages: each written by one thread
        # only, so their difference (what is admitted and not yet written) needs no lock.
        self._in = 0
        self._out = 0
        self._busy = False
        # Counters in the sink's crash ledger once `start` finds it open. Written by the
        # data plane's loop only (one store per call, not atomic across threads).
        self._answered: memoryview[int]
        self._answer_times: memoryview[float]
        self._answered, self._answer_times = detached()

    def admits(self) -> bool:
        """Reject policy: whether a call may be forwarded (its decisions would be recorded).

        Always True under the shed policy. Counts the refusal when False.
        """
        if not self.rejecting:
            return True
        room = self._sink_has_room
        if len(self._queue) < self._limit and (room is None or room(self._in - self._out)):
            return True
        self._rejected.inc()
        return False

    def alive(self) -> bool:
        t = self._thread
        return t is None or t.is_alive()

    def submit(self, batch: Batch, urgent: bool = False) -> bool:
        """Hot path: hand the batch over without waiting. False when it was shed.

        `urgent` wakes the stages now instead of at the next poll (a held answer's
        ticket should be readable at once); it costs a thread hand-off, so it is rare.
        """
        n = len(batch.decisions)
        # The crash ledger: answered, shed or not (a shed batch is credited by its gap record).
        self._answered[ANSWERED] += n
        self._answer_times[LAST_ANSWER] = batch.decisions[0].time
        if len(self._queue) >= self._limit and not self.rejecting:
            self._shed.inc(n)
            if self._gaps is not None:
                self._gaps.note(
                    "queue_full", "decision", n, [d.decision_id for d in batch.decisions]
                )
            return False
        self._submitted.inc(n)
        self._in += n
        self._queue.append(batch)
        if urgent:
            if batch.held is not None and self._held_stage is not None:
                self._held.append(batch)
                self._held_bell.set()
            self._ring()
        return True

    def _ring(self) -> None:
        # Release only a held bell: two rings before one poll are one wake-up.
        with contextlib.suppress(RuntimeError):
            self._bell.release()

    def start(self) -> None:
        crash = self._gaps.crash if self._gaps is not None else None
        if crash is not None and crash.opened:
            self._answered, self._answer_times = crash.counts, crash.times
        self._thread = threading.Thread(target=self._run, name="decision-pipeline", daemon=True)
        self._thread.start()
        if self._held_stage is not None:
            self._held_thread = threading.Thread(
                target=self._run_held, name="held-review", daemon=True
            )
            self._held_thread.start()

    def _run_held(self) -> None:
        stage = self._held_stage
        assert stage is not None
        while True:
            self._held_bell.wait()
            self._held_bell.clear()
            if not self._held and self._stopping:
                return
            while self._held:
                self._run_stage("held-review", stage, [self._held.popleft()])

    def _run(self) -> None:
        q = self._queue
        wait = self._bell.acquire
        poll_s = self._poll_s
        times = self._answer_times
        while True:
            if not q:
                # Nothing waits: every decision answered before now is handed over (a
                # crash's gap record starts here).
                times[HANDED_UNTIL] = time.time()
                if self._stopping:
                    return
                wait(timeout=poll_s)
                continue
            self._busy = True
            batches = [q.popleft() for _ in range(min(len(q), MAX_DRAIN))]
            for name, stage in self._stages:
                self._run_stage(name, stage, batches)
            self._out += sum(len(b.decisions) for b in batches)
            self._busy = False

    def _run_stage(self, name: str, stage: Stage, batches: list[Batch]) -> None:
        try:
            stage(batches)
            return
        except Exception:
            if len(batches) == 1:
                self._failures[name].inc()
                log.exception("pipeline stage %s failed", name)
                return
        # One bad batch must not cost the others of its poll: go again one by one (what
        # the stage did before it failed may be done twice; events are at least once).
        for batch in batches:
            try:
                stage([batch])
            except Exception:
                self._failures[name].inc()
                log.exception("pipeline stage %s failed", name)

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted so far has been through the stages (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._busy:
            if time.monotonic() > deadline:
                return False
            self._ring()
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._ring()
        self._held_bell.set()
        self._thread.join(timeout_s)
        self._thread = None
        if self._held_thread is not None:
            self._held_thread.join(timeout_s)
            self._held_thread = None
        # A stage still stuck: what it never took is accounted for, not lost silently.
        left = 0
        while self._queue:
            batch = self._queue.popleft()
            left += len(batch.decisions)
            if self._gaps is not None:
                ids = [d.decision_id for d in batch.decisions]
                self._gaps.note("closed", "decision", len(ids), ids)
        if left:
            log.error("pipeline: %d decisions never reached the stages before shutdown", left)
