"""The hub's consumer: a Kafka consumer group over the decision, explanation and review topics.

Each poll's events are written in one database transaction; the offsets of
exactly those events are committed (synchronously) only after that transaction
commits. A hub killed between the two has its last batch delivered again (to
itself after a restart, or to the hub that takes the partition over), and the
writes skip what is already there: no event is lost and none is stored twice.

Polling and writing overlap: one thread polls and decodes the next batch while
another writes the current one (a queue of `_AHEAD` batches between them),
because a batch's COPY is mostly the database's time, not the hub's: decoding
on the writer's thread put the hub's decode and the database's insert one after
the other on every batch. The writer takes batches in poll order and hands each
back once its transaction has committed; the polling thread commits their
offsets, in order, between polls (the consumer is only ever called from that
thread: a synchronous commit from another thread while this one polls was seen
to hang for minutes). So an offset is never committed ahead of its rows. When
the group takes partitions away (a rebalance, or the consumer closing), the
batches not yet written are dropped uncommitted, the one being written is
finished and committed, and only then do the partitions go: the next owner
starts from the last committed offset.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from sidecar.config import HubSettings, KafkaSettings
from sidecar.hub.consumer import consumer_config
from sidecar.hub.db import connect
from sidecar.hub.rows import Raw, Rows, add
from sidecar.hub.writer import Method, Writer
from sidecar.metrics import Registry

log = logging.getLogger("sidecar.hub")

# Where messages are decoded: here, message by message (the default), or by PostgreSQL from
# the COPY of their bytes. With the librdkafka consumer the hub's own CPU is no longer what
# holds the rate: the database is, and decoding in the database costs it more (its JSON checks
# and extractions over the staging rows) than the hub saves. Same run, hub on one core
# (loadtests/bench_hub.py): python 2.0x the events/s of database, at 2.2x the hub's CPU per
# event (26 against 12 µs); the README's hub figures keep the numbers.
Decode = Literal["database", "python"]
DEFAULT_DECODE: Decode = "python"

# Batches polled ahead of the one being written: one keeps the database busy while the next
# is polled, and bounds what a rebalance drops (and what sits in memory) to one batch.
_AHEAD = 1


@dataclass(slots=True)
class _Batch:
    # Undecoded (decoded by the database), or decoded on the polling thread: a batch is
    # decoded there while the one before it is in the database, off the writer's path.
    messages: Raw | Rows
    count: int
    offsets: list[TopicPartition]  # the next offset to read, per partition of the batch


class Ingest:
    """Consumes and writes on threads of their own until `stop`."""

    def __init__(
        self,
        *,
        database_url: str,
        kafka: KafkaSettings,
        hub: HubSettings,
        registry: Registry,
        method: Method = "copy",
        decode: Decode = DEFAULT_DECODE,
    ) -> None:
        self._url = database_url
        self._topics = {
            kafka.topic_decisions: "decision",
            kafka.topic_explanations: "explanation",
            kafka.topic_reviews: "review",
        }
        self._config = consumer_config(kafka, hub)
        self._batch_max = hub.batch_max_events
        self._poll_s = hub.poll_timeout_ms / 1000
        self._method: Method = method
        self._decode: Decode = decode
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-ingest", daemon=True)
        self.connected = threading.Event()
        self._written = {
            t: registry.counter(
                "sidecar_hub_rows_written_total", "New rows written by ingest", {"table": t}
            )
            for t in ("decisions", "explanations", "review_events", "review_items")
        }
        self._events = registry.counter("sidecar_hub_events_total", "Events consumed")
        self._invalid = registry.counter(
            "sidecar_hub_events_invalid_total", "Messages that were not events of their topic"
        )
        self._batches = registry.counter("sidecar_hub_batches_total", "Transactions committed")
        self._commit_failed = registry.counter(
            "sidecar_hub_offset_commits_failed_total",
            "Offset commits refused (a rebalance moved the partition; its events come again)",
        )
        self._assigned = registry.gauge(
            "sidecar_hub_partitions_assigned", "Topic partitions this hub consumes now"
        )
        self._errors = registry.counter(
            "sidecar_hub_ingest_errors_total", "Batches that failed and were retried"
        )

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception:
                # A database or broker failure: start over from the last committed offsets.
                self._errors.inc()
                log.exception("hub ingest failed; reconnecting")
                self.connected.clear()
                self._stop.wait(1.0)

    def _consume(self) -> None:
        conn = connect(self._url, application_name="sidecar-hub-ingest")
        try:
            session = _Session(self, Writer(conn, self._method))
            session.run()
        finally:
            self.connected.clear()
            self._assigned.set(0)
            conn.close()


class _Session:
    """One consumer and one database connection: the poll loop here, the writes on a thread."""

    def __init__(self, ingest: Ingest, writer: Writer) -> None:
        self._in = ingest
        self._writer = writer
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=_AHEAD)
        self._done: queue.SimpleQueue[_Batch] = queue.SimpleQueue()  # written, to commit
        self._failure: BaseException | None = None
        self._consumer = Consumer(ingest._config, logger=logging.getLogger("sidecar.hub.kafka"))
        self._write_thread = threading.Thread(
            target=self._write_loop, name="hub-ingest-write", daemon=True
        )

    def run(self) -> None:
        ing = self._in
        consumer = self._consumer
        topics = ing._topics
        self._write_thread.start()
        try:
            consumer.subscribe(
                list(topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            ing.connected.set()
            while not ing._stop.is_set():
                self._commit_done()
                if self._failure is not None:
                    raise self._failure
                messages = self._next_batch()
                if not messages:
                    continue
                ends: dict[tuple[str, int], int] = {}
                values: dict[str, list[bytes | None]] = {}
                for m in messages:
                    err = m.error()
                    if err is not None:
                        self._broker_error(err)
                        continue
                    # A message without an error always has its topic, partition and offset.
                    topic = str(m.topic())
                    values.setdefault(topic, []).append(m.value())
                    ends[(topic, int(m.partition() or 0))] = int(m.offset() or 0)
                if not ends:
                    continue
                offsets = [TopicPartition(t, p, o + 1) for (t, p), o in ends.items()]
                self._hand_over(self._batch(values, offsets))
        finally:
            self._end()

    def _batch(
        self, values: dict[str, list[bytes | None]], offsets: list[TopicPartition]
    ) -> _Batch:
        topics = self._in._topics
        count = sum(len(vs) for vs in values.values())
        if self._in._decode == "database":
            raw = Raw()
            for topic, vs in values.items():
                raw.extend(topics[topic], vs)
            return _Batch(raw, count, offsets)
        rows = Rows()
        for topic, vs in values.items():
            kind = topics[topic]
            for v in vs:
                add(rows, kind, v)
        return _Batch(rows, count, offsets)

    def _next_batch(self) -> list[Message]:
        """What the consumer holds now, up to `batch_max_events`; when it holds nothing, the
        first message to arrive within the poll timeout and what came with it. librdkafka's
        consume(n, timeout) would wait for n messages or the whole timeout: at 500 events/s
        every event waited out the 200 ms (visibility p50 194 ms against 81 ms)."""
        ing = self._in
        consumer = self._consumer
        messages = consumer.consume(ing._batch_max, 0)
        if messages:
            return messages
        first = consumer.poll(ing._poll_s)
        if first is None:
            return []
        return [first, *consumer.consume(ing._batch_max - 1, 0)] if ing._batch_max > 1 else [first]

    def _broker_error(self, err: KafkaError) -> None:
        if err.fatal():
            raise KafkaException(err)
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("hub consumer: %s", err.str())

    def _hand_over(self, batch: _Batch) -> None:
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                self._queue.put(batch, timeout=0.05)
                return
            except queue.Full:
                self._commit_done()

    def _drop_queued(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            self._queue.task_done()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._in._assigned.set(len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called on this (the polling) thread, inside consume() or close(): nothing new is
        # queued meanwhile. Batches not yet written are dropped (their offsets never
        # committed: the next owner reads them again); the one being written is finished,
        # and its offsets committed, before the partitions go.
        self._drop_queued()
        self._queue.join()
        self._commit_done()
        self._in._assigned.set(0)

    def _end(self) -> None:
        self._drop_queued()
        self._queue.put(None)  # room: only this thread puts, and the queue was just emptied
        self._write_thread.join()
        self._commit_done()
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError):
            log.warning("closing the consumer failed", exc_info=True)

    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                if self._failure is None:
                    self._write(batch)
            except BaseException as e:  # handed to the polling thread, which starts over
                self._failure = e
            finally:
                self._queue.task_done()

    def _write(self, batch: _Batch) -> None:
        ing = self._in
        if isinstance(batch.messages, Raw):
            written = self._writer.write_raw(batch.messages)
        else:
            written = self._writer.write_rows(batch.messages)
        ing._events.inc(batch.count)
        ing._invalid.inc(written.invalid)
        ing._batches.inc()
        for table, counter in ing._written.items():
            counter.inc(getattr(written, table))
        self._done.put(batch)

    def _commit_done(self) -> None:
        """Commit the offsets of the batches written so far, in order (this thread only)."""
        while True:
            try:
                batch = self._done.get_nowait()
            except queue.Empty:
                return
            try:
                # Synchronous, the batch's own offsets: what is committed is what was written.
                self._consumer.commit(offsets=batch.offsets, asynchronous=False)
            except KafkaException as e:
                # The group moved a partition while we wrote: its new owner gets these events
                # again and the writes skip them.
                self._in._commit_failed.inc()
                log.warning("offset commit refused (%s); events will repeat", e.args[0])
