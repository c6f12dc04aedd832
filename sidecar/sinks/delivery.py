"""The delivery thread: reads the spool in order, produces to Kafka, acknowledges.

It keeps at most `max_in_flight` records handed to the producer and not yet
acknowledged; everything else waits in the spool, on disk, not in memory.
The in-flight records sit in a queue in spool order next to their futures;
the thread pops completed ones from the front, so what it acknowledges to
the spool is always a prefix. Only the last future of each batch gets a
callback, and all it does is wake this thread: per-record callbacks cost
more than the whole spool append.

On a delivery error it waits briefly for the outstanding records to resolve,
rewinds the spool to the first unacknowledged record and sends again from
there, in order: at least once, and consumers de-duplicate on `event_id`.
Records still unresolved after that wait, or in flight past the delivery
timeout without an answer (kafka-python leaves some futures unresolved after
a broker hang), cost the producer: it is closed and a fresh one built, so
delivery resumes within seconds of the broker's return. Records the old
producer did deliver after all are sent twice (at least once).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from sidecar.metrics import Registry
from sidecar.sinks.spool import Spool
from sidecar.sinks.spool_format import Record

log = logging.getLogger("sidecar.sinks.delivery")


class Future(Protocol):
    is_done: bool
    exception: BaseException | None

    def add_both(self, f: Callable[..., Any], *args: Any) -> Any: ...


class Producer(Protocol):
    def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> Future: ...

    def close(self, timeout: float | None = None) -> None: ...


_MAX_CONNECT_BACKOFF_S = 5.0
# Pause before reading the spool again after a disk error.
_READ_RETRY_S = 0.5
# How long a recovery waits for outstanding records before it gives up on the producer.
_RESOLVE_WAIT_S = 2.0

# After a delivery error records go back to the producer a window at a time, the window
# growing by what is acknowledged (TCP's slow start). Replaying the whole backlog into a
# producer that cannot deliver cost a burst of CPU on the delivery and I/O threads, whose GIL
# showed as a ~350 ms stall of every proxied call at the delivery timeout of a hung broker
# (bench_sink --proxy-broker-hung).
_RESTART_WINDOW = 256

HeaderBuilder = Callable[[Record], list[tuple[str, bytes]]]


def crc32_partition(key: bytes, partitions: list[int]) -> int:
    """The partition for `key`: CRC-32 of the key modulo the partition count.

    The same mapping as librdkafka's `consistent` partitioner, computed in C;
    kafka-python's default (the Java client's murmur2) is pure Python and
    cost more per event than the spool. Every sidecar replica maps a key alike.
    """
    if len(partitions) == 1:
        return partitions[0]
    return partitions[zlib.crc32(key) % len(partitions)]


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
        request_timeout_s: float,
        delivery_timeout_s: float,
        probe: Callable[[], bool] | None = None,
    ) -> None:
        self._spool = spool
        self._make_producer = make_producer
        # A cheap reachability check before building a producer: a failed build leaves
        # thousands of objects in reference cycles, and the full garbage collections they
        # bring stall every thread of the service.
        self._probe = probe
        self._topics = topics
        self._headers = headers
        self._max_in_flight = max_in_flight
        self._window = max_in_flight
        self._retry_backoff_s = retry_backoff_s
        self._request_timeout_s = request_timeout_s
        # Past this without an answer a record's future is not going to resolve.
        self._wedged_after_s = delivery_timeout_s + 1.0
        self._last_progress = time.monotonic()  # last ack, or when the in-flight queue filled
        self._producer: Producer | None = None
        self._inflight: collections.deque[tuple[Record, Future]] = collections.deque()
        self._failed = False
        self._unsent: Record | None = None
        # The first record not yet acknowledged, kept across a rewind (the age gauge reads it).
        self._oldest: Record | None = None
        self._max_sent = -1
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self.connected = False
        self._connect_failures = 0

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
            fn=lambda: float(len(self._inflight)),
        )
        registry.gauge(
            "sidecar_producer_connected",
            "1 while the producer is built, delivering without errors, and the broker answered "
            "within request_timeout_ms of the oldest record in flight",
            fn=lambda: 1.0 if self.broker_connected() else 0.0,
        )
        registry.gauge(
            "sidecar_oldest_unacked_event_age_seconds",
            "Age (from its event time) of the oldest event handed to the producer and not yet "
            "acknowledged; 0 when none",
            fn=self.oldest_unacked_age,
        )
        registry.gauge(
            "sidecar_thread_alive",
            "1 while the thread runs",
            {"thread": "kafka-delivery"},
            fn=lambda: 1.0 if self.alive() else 0.0,
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
            self._thread.join(timeout_s + 3.0)
            self._thread = None

    def alive(self) -> bool:
        """True while the delivery thread runs (or before it was started / after a clean stop)."""
        t = self._thread
        return t is None or t.is_alive()

    def broker_connected(self) -> bool:
        """Connected, and no record has waited past request_timeout_ms for the broker's answer."""
        if not self.connected:
            return False
        inflight = self._inflight
        return not inflight or time.monotonic() - self._last_progress < self._request_timeout_s

    def oldest_unacked_age(self) -> float:
        rec = self._oldest
        if rec is None:
            return 0.0
        try:
            when = datetime.fromisoformat(rec.time).timestamp()
        except ValueError:
            return 0.0
        return max(0.0, time.time() - when)

    def _wake_up(self, *_: object) -> None:
        # Runs on the producer's I/O thread: do nothing but wake the delivery thread,
        # which waits either on this event or on the spool for new records.
        self._wake.set()
        self._spool.wake_reader()

    # -- the loop ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                if self._stop.is_set() and self._should_finish():
                    break
                try:
                    self._step()
                except OSError as exc:
                    # A failing disk (reading a segment, freeing one) must not end delivery:
                    # what is spooled waits for the disk, and readiness reports it meanwhile.
                    self._spool.read_failed(exc)
                    self._stop.wait(_READ_RETRY_S)
        except Exception:
            log.exception("kafka delivery thread failed; events stay in the spool")
        finally:
            self._shutdown()

    def _step(self) -> None:
        """One turn of the loop: connect, take acknowledgements, recover, or send more."""
        if self._producer is None and not self._connect():
            return
        self._drain()
        if not self._failed and self._wedged():
            self.m_errors.inc()
            self._failed = True
            self.connected = False
            log.warning(
                "kafka: no answer for %.0f s past the delivery timeout; "
                "starting a fresh producer and replaying from the spool",
                self._wedged_after_s,
            )
        if self._failed:
            self._recover()
            return
        inflight = self._inflight
        if inflight and time.monotonic() - self._last_progress > self._request_timeout_s:
            # No answer within request_timeout_ms: more records would only wait in the
            # producer and expire together with these; they wait in the spool instead.
            self._wait()
            return
        room = min(self._max_in_flight, self._window) - len(inflight)
        if room <= 0:
            self._wait()
            return
        # Returns on new records, on a batch's acknowledgement (wake_reader), or idle.
        records = self._spool.read(min(room, 4096), 0.1)
        if records:
            self._send(records)

    def _wedged(self) -> bool:
        return bool(self._inflight) and (
            time.monotonic() - self._last_progress > self._wedged_after_s
        )

    def _wait(self) -> None:
        self._wake.wait(0.05)
        self._wake.clear()

    def _should_finish(self) -> bool:
        if time.monotonic() >= self._deadline:
            return True
        self._drain()
        return not self._inflight and not self._spool.unread()

    def _connect(self) -> bool:
        try:
            if self._probe is not None and not self._probe():
                raise ConnectionError("no bootstrap server accepts connections")
            self._producer = self._make_producer()
            self.connected = True
            self._connect_failures = 0
            return True
        except Exception as exc:
            self.m_errors.inc()
            self.connected = False
            n = self._connect_failures = self._connect_failures + 1
            # Back off exponentially: a long outage should cost the service next to nothing.
            delay = min(self._retry_backoff_s * 2 ** min(n, 10), _MAX_CONNECT_BACKOFF_S)
            if n == 1 or n % 10 == 0:
                log.warning(
                    "kafka: cannot reach the brokers (%s), %d tries; events stay in the spool",
                    exc,
                    n,
                )
            self._stop.wait(delay)
            return False

    def _send(self, records: list[Record]) -> None:
        producer = self._producer
        assert producer is not None
        topics, headers, inflight = self._topics, self._headers, self._inflight
        fut = None
        sent = replayed = 0
        if not inflight:
            self._last_progress = time.monotonic()
            if self._oldest is None and records:
                self._oldest = records[0]
        for rec in records:
            if rec.replay or rec.seq <= self._max_sent:
                replayed += 1
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
                self._unsent = rec
                break
            inflight.append((rec, fut))
            sent += 1
            if rec.seq > self._max_sent:
                self._max_sent = rec.seq
        if sent and fut is not None:
            fut.add_both(self._wake_up)
        self.m_sent.inc(sent)
        self.m_replayed.inc(replayed)

    def _drain(self) -> None:
        """Pop acknowledged records off the front; stop at the first failure."""
        inflight = self._inflight
        n = 0
        while inflight:
            fut = inflight[0][1]
            if not fut.is_done:
                break
            if fut.exception is not None:
                if not self._failed:
                    self.m_errors.inc()
                    self._failed = True
                    self.connected = False
                    log.warning(
                        "kafka: delivery failed (%s); will replay from the spool", fut.exception
                    )
                break
            inflight.popleft()
            n += 1
        if n:
            self._last_progress = time.monotonic()
            self._window = min(self._max_in_flight, self._window + n)
            self._oldest = inflight[0][0] if inflight else self._unsent
            self.m_acked.inc(n)
            if not self._failed:
                self.connected = True
            if inflight:
                self._spool.acknowledge(inflight[0][0].seq, inflight[0][0].pos)
            elif self._unsent is not None:
                self._spool.acknowledge(self._unsent.seq, self._unsent.pos)
            else:
                self._spool.acknowledge(self._max_sent + 1, None)

    def _recover(self) -> None:
        """Wait briefly for outstanding records, rewind to the first unacknowledged, back off."""
        deadline = time.monotonic() + _RESOLVE_WAIT_S
        inflight = self._inflight
        while any(not f.is_done for _, f in inflight) and time.monotonic() < deadline:
            self._wake.wait(0.1)
            self._wake.clear()
            if self._stop.is_set() and time.monotonic() >= self._deadline:
                return
        self._drain()
        first = inflight[0][0] if inflight else self._unsent
        self._oldest = first
        if first is not None:
            self._spool.acknowledge(first.seq, first.pos)
            self._spool.rewind(first.pos)
        if any(not f.is_done for _, f in inflight):
            # Futures that never resolved: start over with a fresh producer.
            self._close_producer(0.0)
        inflight.clear()
        self._unsent = None
        self._failed = False
        self._window = min(self._max_in_flight, _RESTART_WINDOW)
        self._stop.wait(self._retry_backoff_s)

    def _close_producer(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        self.connected = False
        if producer is not None:
            try:
                producer.close(timeout=timeout_s)
            except Exception as exc:
                # kafka-python's close flushes first, and a flush that times out raises before
                # the sender is stopped: stop it here, or its I/O thread outlives the producer.
                sender = getattr(producer, "_sender", None)
                if sender is not None:
                    sender.force_close()
                log.warning("kafka: producer closed with records unresolved (%s)", exc)

    def _shutdown(self) -> None:
        remaining = max(0.0, self._deadline - time.monotonic())
        self._close_producer(remaining)
        self._drain()
