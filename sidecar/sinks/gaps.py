"""The gap ledger: every answered decision (or other event) that will not reach the stream.

Whoever loses an event tells the ledger (the decision queue when it sheds, the
spool when it is full or its disk fails, a sink refusing an event); a
`gap-records` thread turns what was noted into gap events at least every
`FLUSH_S` and hands them to the sink, which writes them even into a full
spool (they are small, and they are the only trace of the loss). A gap event
says why (`reason`), how many (`dropped`, `by_kind`), over which time range,
and names the decision ids lost (up to `MAX_IDS` per record; more losses go on
in the next record), so a consumer can join it to what it did not receive. A
gap event the sink refuses stays pending and is offered again: its id is fixed
when it is built, so a retry is de-duplicated like any other event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.metrics import Registry
from sidecar.sinks import events
from sidecar.sinks.crash import CrashLedger

log = logging.getLogger("sidecar.sinks.gaps")

# "Emitted within a second": the flusher looks twice a second.
FLUSH_S = 0.5
# Decision ids named in one gap record; past it the record says the list is partial.
MAX_IDS = 1000
# Built gap events kept while the sink refuses them (a closed or failing spool).
MAX_PENDING = 10_000

Publish = Callable[[str, dict[str, Any]], bool]


@dataclass(slots=True)
class _Open:
    """What one reason lost since its last gap record."""

    first: float
    last: float
    by_kind: dict[str, int] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    ids_complete: bool = True


class GapLedger:
    """Thread-safe: `note` from any thread; one flusher thread emits."""

    def __init__(self, registry: Registry, flush_s: float = FLUSH_S) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        self._pending: list[dict[str, Any]] = []
        self._flush_s = flush_s
        self._publish: Publish | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._registry = registry
        self._noted: dict[tuple[str, str], Any] = {}
        # The sink's crash ledger, when it keeps one: the pipeline counts answered decisions in it.
        self.crash: CrashLedger | None = None
        self.m_records = registry.counter(
            "sidecar_gap_records_total", "Gap records handed to the sink"
        )
        self.m_lost_pending = registry.counter(
            "sidecar_gap_records_lost_total",
            "Gap records given up (the sink refused them past the pending bound, or at close)",
        )
        registry.gauge(
            "sidecar_gap_records_pending",
            "Gap records built and not yet accepted by the sink",
            fn=lambda: float(len(self._pending)),
        )

    def note(
        self,
        reason: str,
        kind: str,
        n: int,
        ids: Iterable[str] = (),
        when: float | None = None,
        since: float | None = None,
    ) -> None:
        """`n` events of `kind` were lost for `reason`; `ids` are the decision ids, when known.

        `when` is the time of the loss (now by default); `since`, when the losses span a
        time range known only by its ends (a crash's), is where that range begins.
        """
        if n <= 0:
            return
        now = time.time() if when is None else when
        with self._lock:
            c = self._noted.get((reason, kind))
            if c is None:
                c = self._noted[(reason, kind)] = self._registry.counter(
                    "sidecar_gap_events_total",
                    "Events accounted for in gap records, by reason and kind",
                    {"reason": reason, "kind": kind},
                )
            c.inc(n)
            start = now if since is None else min(since, now)
            got = list(ids)
            if kind != "decision" or len(got) != n:
                self._add(reason, kind, n, got, start, now)
                return
            # Every id known: a record names at most MAX_IDS, and the rest go on in the
            # next record, so a burst of losses never leaves a list partial.
            while got:
                g = self._open.get(reason)
                if g is not None and not g.ids_complete:
                    self._add(reason, kind, len(got), got, start, now)
                    return
                if g is not None and len(g.ids) >= MAX_IDS:
                    self._seal(reason)
                    g = None
                room = MAX_IDS - (len(g.ids) if g is not None else 0)
                part, got = got[:room], got[room:]
                self._add(reason, kind, len(part), part, start, now)
            self._bound()

    def _add(
        self, reason: str, kind: str, n: int, ids: list[str], start: float, now: float
    ) -> None:
        """Note `n` lost events in the open record of `reason` (lock held)."""
        g = self._open.get(reason)
        if g is None:
            g = self._open[reason] = _Open(start, now)
        g.last = max(g.last, now)
        g.first = min(g.first, start)
        g.by_kind[kind] = g.by_kind.get(kind, 0) + n
        if kind == "decision" and g.ids_complete:
            room = MAX_IDS - len(g.ids)
            if len(ids) < n or len(ids) > room:
                g.ids_complete = False
            g.ids.extend(ids[:room])

    def _seal(self, reason: str) -> None:
        """The open record of `reason` becomes a gap event, pending for the sink (lock held)."""
        g = self._open.pop(reason)
        self._seq += 1
        self._pending.append(
            events.gap_event(
                reason=reason,
                by_kind=g.by_kind,
                first_time=g.first,
                last_time=g.last,
                decision_ids=g.ids,
                decision_ids_complete=g.ids_complete,
                # The pid: two workers (proxy.workers) never mint one id.
                nonce=(time.time_ns(), self._seq, os.getpid()),
            )
        )

    def take(self) -> list[dict[str, Any]]:
        """Turn what was noted into gap events (pending until the sink accepts them)."""
        with self._lock:
            for reason in list(self._open):
                self._seal(reason)
            self._bound()
            return list(self._pending)

    def _bound(self) -> None:
        """At most MAX_PENDING records wait for the sink; the oldest past it are given up,
        counted (lock held). Checked wherever records are sealed: a burst of losses seals
        one record a MAX_IDS decisions between two flushes."""
        if len(self._pending) > MAX_PENDING:
            over = len(self._pending) - MAX_PENDING
            del self._pending[:over]
            self.m_lost_pending.inc(over)
            log.error("gap records: %d could not be written and are given up", over)

    def flush(self) -> int:
        """Offer every pending gap event to the sink; returns how many it accepted."""
        publish = self._publish
        if publish is None:
            return 0
        bodies = self.take()
        accepted = []
        for body in bodies:
            try:
                ok = publish(body["event_id"], body)
            except Exception:
                log.exception("gap records: the sink failed")
                ok = False
            if not ok:
                break  # keep the order: the rest waits for the next round
            accepted.append(body["event_id"])
            self.m_records.inc()
            log.warning(
                "gap record: %d events lost (%s) between %s and %s",
                body["dropped"],
                body["reason"],
                body["first_time"],
                body["last_time"],
            )
        if accepted:
            done = set(accepted)
            with self._lock:
                self._pending = [b for b in self._pending if b["event_id"] not in done]
        return len(accepted)

    def start(self, publish: Publish) -> None:
        self._publish = publish
        self._thread = threading.Thread(target=self._run, name="gap-records", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()

    def close(self) -> None:
        """Stop the thread and emit what is left (the sink is still open)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self.flush()
        if self._pending:
            self.m_lost_pending.inc(len(self._pending))
            log.error(
                "gap records: %d could not be written at close: %s",
                len(self._pending),
                [(b["reason"], b["dropped"]) for b in self._pending],
            )
