"""The hub's consumer: a Kafka consumer group over the decision, explanation and review topics.

Each poll's events are written in one database transaction; the offsets are
committed only after that transaction commits. A hub killed between the two
has its last batch delivered again (to itself after a restart, or to the hub
that takes the partition over), and the writes skip what is already there:
no event is lost and none is stored twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError

from sidecar.config import HubSettings, KafkaSettings
from sidecar.hub.db import connect
from sidecar.hub.rows import Raw
from sidecar.hub.writer import Method, Writer
from sidecar.metrics import Registry

log = logging.getLogger("sidecar.hub")

# Where messages are decoded: by PostgreSQL from the COPY of their bytes (the default), or
# here, message by message (kept for the same-run comparison in loadtests/bench_hub.py).
Decode = Literal["database", "python"]


def consumer_options(kafka: KafkaSettings, hub: HubSettings) -> dict[str, Any]:
    """kafka-python consumer options from the shared `[kafka]` section and `[hub]`."""
    opts: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in kafka.bootstrap_servers.split(",") if s.strip()],
        "group_id": hub.group_id,
        "client_id": f"{kafka.client_id}-hub",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": hub.batch_max_events,
        # The default (1 MiB) holds about 1,000 decision events, so a poll from one busy
        # partition wrote batches of ~1,000; 8 MiB lets one poll fill `batch_max_events`
        # (fewer transactions and offset commits: the writer's share per event fell by a
        # third, measured; fetch_max_bytes, 50 MiB, still bounds a fetch).
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        # Partitions added to a topic (or a topic created after the hub subscribed) reach the
        # group's assignment within 30 s, not the client's default 5 minutes.
        "metadata_max_age_ms": 30_000,
        "security_protocol": kafka.security_protocol,
        "ssl_check_hostname": kafka.ssl_check_hostname,
    }
    if kafka.sasl_mechanism is not None:
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            opts["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    for key, value in (
        ("ssl_cafile", kafka.ssl_cafile),
        ("ssl_certfile", kafka.ssl_certfile),
        ("ssl_keyfile", kafka.ssl_keyfile),
    ):
        if value is not None:
            opts[key] = str(value)
    if kafka.ssl_password is not None:
        opts["ssl_password"] = kafka.ssl_password.get_secret_value()
    return opts


class Ingest:
    """Consumes and writes on a thread of its own until `stop`."""

    def __init__(
        self,
        *,
        database_url: str,
        kafka: KafkaSettings,
        hub: HubSettings,
        registry: Registry,
        method: Method = "copy",
        decode: Decode = "database",
    ) -> None:
        self._url = database_url
        self._topics = {
            kafka.topic_decisions: "decision",
            kafka.topic_explanations: "explanation",
            kafka.topic_reviews: "review",
        }
        self._options = consumer_options(kafka, hub)
        self._poll_ms = hub.poll_timeout_ms
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
        consumer = KafkaConsumer(*self._topics, **self._options)
        try:
            writer = Writer(conn, self._method)
            self.connected.set()
            topics = self._topics
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=self._poll_ms)
                self._assigned.set(len(consumer.assignment()))
                if not polled:
                    continue
                raw = Raw()
                for tp, records in polled.items():
                    raw.extend(topics[tp.topic], [rec.value for rec in records])
                if self._decode == "database":
                    written = writer.write_raw(raw)
                else:
                    written = writer.write_decoded(raw)
                self._events.inc(raw.count)
                self._invalid.inc(written.invalid)
                self._batches.inc()
                for table in self._written:
                    self._written[table].inc(getattr(written, table))
                try:
                    consumer.commit()
                except CommitFailedError:
                    # The group moved the partition while we wrote: its new owner gets these
                    # events again and the writes skip them.
                    self._commit_failed.inc()
                    log.warning("offset commit refused after a rebalance; events will repeat")
        finally:
            self.connected.clear()
            self._assigned.set(0)
            try:
                consumer.close(autocommit=False)
            except KafkaError:
                log.warning("closing the consumer failed", exc_info=True)
            conn.close()
