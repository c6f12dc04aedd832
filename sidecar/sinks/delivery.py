"""The delivery thread: reads the spool in order, produces to Kafka, acknowledges.

It keeps at most `max_in_flight` records handed to the producer and not yet
acknowledged; everything else waits in the spool, on disk, not in memory.
Producer callbacks only append to a deque; this thread does the
bookkeeping, so the spool has a single reader and a single acknowledger.

On a delivery error it waits for every outstanding record to resolve,
rewinds the spool to the first unacknowledged record and sends again from
there, in order: at least once, and consumers de-duplicate on `event_id`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sidecar.metrics import Registry
from sidecar.spool import Position, Record, Spool

log = logging.getLogger("sidecar.sinks.delivery")


class Producer(Protocol):
    def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


HeaderBuilder = Callable[[Record], list[tuple[str, bytes]]]


class Delivery:
    def __init__(
        self,
        spool: Spool,
        make_producer: Callable[[], Producer],
        topics: dict[str, str],
        headers: HeaderBuilder,
        registry: Registry,
        *,
        max_in_flight: int,
        retry_backoff_s: float,
        resolve_timeout_s: float,
    ) -> None:
        self._spool = spool
        self._make_producer = make_producer
        self._topics = topics
        self._headers = headers
        self._max_in_flight = max_in_flight
        self._retry_backoff_s = retry_backoff_s
        self._resolve_timeout_s = resolve_timeout_s
        self._producer: Producer | None = None
        self._inflight: collections.deque[Record] = collections.deque()
        self._acked: set[int] = set()
        self._outstanding = 0
        self._failed = False
        self._unsent: Position | None = None
        self._max_sent = -1
        # Written by the producer's I/O thread, drained here.
        self._done: collections.deque[tuple[int, int, BaseException | None]] = collections.deque()
        self._gen = 0  # bumped when a producer is abandoned: its late callbacks are ignored
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self.connected = False

        self.m_acked = registry.counter(
            "sidecar_events_acked_total",
            "Events acknowledged by the broker (Kafka) or written (files)",
        )
        self.m_replayed = registry.counter(
            "sidecar_events_replayed_total",
            "Events sent again: left by an earlier run, or re-sent after a delivery error",
        )
        self.m_errors = registry.counter(
            "sidecar_producer_errors_total", "Producer errors (connect, send, delivery)"
        )
        self.m_sent = registry.counter(
            "sidecar_events_produced_total",
            "Events handed to the Kafka producer (sends and re-sends)",
        )
        registry.gauge(
            "sidecar_events_in_flight",
            "Events handed to the producer and not yet acknowledged",
            fn=lambda: float(self._outstanding),
        )
        registry.gauge(
            "sidecar_producer_connected",
            "1 while the producer is built and delivering without errors",
            fn=lambda: 1.0 if self.connected else 0.0,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Deliver what is spooled until `timeout_s`, then stop; the rest stays in the spool."""
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s + 2.0)
            self._thread = None

    # -- callbacks (producer I/O thread) --------------------------------

    def _on_ack(self, gen: int, seq: int, _metadata: object) -> None:
        self._done.append((gen, seq, None))
        self._wake.set()

    def _on_error(self, gen: int, seq: int, exc: BaseException) -> None:
        self._done.append((gen, seq, exc))
        self._wake.set()

    # -- the loop ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                if self._stop.is_set() and self._should_finish():
                    break
                if self._producer is None and not self._connect():
                    continue
                self._drain()
                if self._failed:
                    self._recover()
                    continue
                room = self._max_in_flight - self._outstanding
                if room <= 0:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                records = self._spool.read(min(room, 4096), 0.05)
                if records:
                    self._send(records)
                elif self._outstanding:
                    self._wake.wait(0.01)
                    self._wake.clear()
        except Exception:
            log.exception("kafka delivery thread failed; events stay in the spool")
        finally:
            self._shutdown()

    def _should_finish(self) -> bool:
        if time.monotonic() >= self._deadline:
            return True
        self._drain()
        return self._outstanding == 0 and not self._spool.unread()

    def _connect(self) -> bool:
        try:
            self._producer = self._make_producer()
            self.connected = True
            return True
        except Exception as exc:
            self.m_errors.inc()
            self.connected = False
            log.warning("kafka: cannot build the producer (%s); retrying", exc)
            self._stop.wait(self._retry_backoff_s)
            return False

    def _send(self, records: list[Record]) -> None:
        producer = self._producer
        assert producer is not None
        topics, headers, gen = self._topics, self._headers, self._gen
        for i, rec in enumerate(records):
            if rec.replay or rec.seq <= self._max_sent:
                self.m_replayed.inc()
            try:
                fut = producer.send(
                    topics[rec.kind], value=rec.body, key=rec.key.encode(), headers=headers(rec)
                )
            except Exception as exc:
                # Typically metadata unavailable (broker down at start): resend from here later.
                self.m_errors.inc()
                self.connected = False
                log.warning("kafka: send failed (%s); events stay in the spool", exc)
                self._failed = True
                self._unsent = rec.pos
                del records[i:]
                return
            self._inflight.append(rec)
            self._outstanding += 1
            if rec.seq > self._max_sent:
                self._max_sent = rec.seq
            fut.add_callback(self._on_ack, gen, rec.seq)
            fut.add_errback(self._on_error, gen, rec.seq)
        self.m_sent.inc(len(records))

    def _drain(self) -> None:
        done = self._done
        if not done:
            return
        acked = self._acked
        n_ok = 0
        gen = self._gen
        while done:
            g, seq, exc = done.popleft()
            if g != gen:
                continue
            self._outstanding -= 1
            if exc is None:
                acked.add(seq)
                n_ok += 1
            elif not self._failed:
                self.m_errors.inc()
                self._failed = True
                self.connected = False
                log.warning("kafka: delivery failed (%s); will replay from the spool", exc)
            else:
                self.m_errors.inc()
        self.m_acked.inc(n_ok)
        inflight = self._inflight
        moved = False
        while inflight and inflight[0].seq in acked:
            acked.discard(inflight.popleft().seq)
            moved = True
        if moved and not self._failed:
            self.connected = True
            if inflight:
                self._spool.acknowledge(inflight[0].seq, inflight[0].pos)
            else:
                self._spool.acknowledge(self._max_sent + 1, None)

    def _recover(self) -> None:
        """Wait for every outstanding record, rewind to the first unacknowledged, back off."""
        deadline = time.monotonic() + self._resolve_timeout_s
        while self._outstanding > 0 and time.monotonic() < deadline:
            self._wake.wait(0.1)
            self._wake.clear()
            self._drain()
            if self._stop.is_set() and time.monotonic() >= self._deadline:
                return
        inflight = self._inflight
        while inflight and inflight[0].seq in self._acked:
            self._acked.discard(inflight.popleft().seq)
        if inflight:
            first = inflight[0]
            self._spool.acknowledge(first.seq, first.pos)
            self._spool.rewind(first.pos)
        elif self._unsent is not None:
            self._spool.rewind(self._unsent)
        inflight.clear()
        self._acked.clear()
        self._unsent = None
        if self._outstanding > 0:
            # Futures that never resolved: start over with a fresh producer.
            self._gen += 1
            self._close_producer(0.0)
            self._outstanding = 0
        self._failed = False
        self._stop.wait(self._retry_backoff_s)

    def _close_producer(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        self.connected = False
        if producer is not None:
            try:
                producer.close(timeout=timeout_s)
            except Exception:
                log.exception("kafka: producer close failed")

    def _shutdown(self) -> None:
        remaining = max(0.0, self._deadline - time.monotonic())
        self._close_producer(remaining)
        self._drain()
