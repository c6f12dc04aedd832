"""sink.kind = "kafka": the spool in front of a Kafka producer.

`publish` serialises the body and appends it to the spool (one `write`, no
network, no fsync unless spool.fsync = "always") and returns; the delivery
thread does the rest. Messages follow the CloudEvents Kafka binding in
binary mode: the body is the event's JSON, the attributes are `ce_*` headers,
and the key is the decision id, so one decision's events stay in order on
one partition.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from functools import partial
from typing import Any

from sidecar.config import ConfigError, KafkaSettings, SpoolSettings
from sidecar.metrics import Registry
from sidecar.sinks import events
from sidecar.sinks.base import EventKind
from sidecar.sinks.crash import CrashLedger
from sidecar.sinks.delivery import Delivery, Producer, crc32_partition
from sidecar.sinks.gaps import GapLedger
from sidecar.sinks.spool import Spool
from sidecar.sinks.spool_format import Record
from sidecar.sinks.stats import SinkStats

log = logging.getLogger("sidecar.sinks.kafka")

_CODECS = {"gzip": "has_gzip", "lz4": "has_lz4", "snappy": "has_snappy", "zstd": "has_zstd"}
_CONTENT_TYPE = ("content-type", b"application/json")
_SPECVERSION = ("ce_specversion", b"1.0")
# Spool room the reject policy wants free before it forwards a call (a few polls of events).
_ROOM_BYTES = 256 * 1024


def producer_config(k: KafkaSettings) -> dict[str, Any]:
    """kafka-python KafkaProducer arguments; raises ConfigError naming the key at fault."""
    from kafka import KafkaProducer, codec

    if k.compression_type != "none" and not getattr(codec, _CODECS[k.compression_type])():
        raise ConfigError(
            f"config key 'kafka.compression_type': {k.compression_type} needs its Python "
            f"package (pip install {'python-snappy' if k.compression_type == 'snappy' else k.compression_type})"
        )
    if k.delivery_timeout_ms < k.linger_ms + k.request_timeout_ms:
        raise ConfigError(
            "config key 'kafka.delivery_timeout_ms': must be at least linger_ms + request_timeout_ms"
        )
    cfg: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in k.bootstrap_servers.split(",") if s.strip()],
        "client_id": k.client_id,
        "acks": "all",
        "enable_idempotence": k.enable_idempotence,
        "linger_ms": k.linger_ms,
        "batch_size": k.batch_size,
        "compression_type": None if k.compression_type == "none" else k.compression_type,
        "request_timeout_ms": k.request_timeout_ms,
        "delivery_timeout_ms": k.delivery_timeout_ms,
        # Metadata waits happen on the delivery thread; keep them short so close() is prompt.
        "max_block_ms": 2000,
        "bootstrap_timeout_ms": 2000,
        # The sidecar counts what matters itself; the client's own sensors cost CPU per record.
        "metrics_enabled": False,
        "reconnect_backoff_max_ms": 2000,
        "security_protocol": k.security_protocol,
        "ssl_check_hostname": k.ssl_check_hostname,
    }
    cfg["partitioner"] = _crc32_partitioner()
    cfg["kafka_client"] = _net_client()
    if k.sasl_mechanism is not None:
        cfg["sasl_mechanism"] = k.sasl_mechanism
    if k.sasl_username is not None:
        cfg["sasl_plain_username"] = k.sasl_username
    if k.sasl_password is not None:
        cfg["sasl_plain_password"] = k.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(k, name)
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"config key 'kafka.{name}': {path} is not a file")
            cfg[name] = str(path)
    if k.ssl_password is not None:
        cfg["ssl_password"] = k.ssl_password.get_secret_value()
    for name, value in k.extra.items():
        if name not in KafkaProducer.DEFAULT_CONFIG or name in (
            "key_serializer",
            "value_serializer",
        ):
            raise ConfigError(f"config key 'kafka.extra.{name}': not a KafkaProducer option")
        if name == "acks" and value not in ("all", -1):
            raise ConfigError("config key 'kafka.extra.acks': the sidecar always uses acks=all")
        cfg[name] = value
    return cfg


def new_producer(cfg: dict[str, Any]) -> Producer:
    """A kafka-python KafkaProducer from `producer_config`'s arguments."""
    from kafka import KafkaProducer

    producer: Producer = KafkaProducer(**cfg)
    return producer


_CE_TYPES = {k: v.encode() for k, v in events.CE_TYPES.items()}


def cloudevent_headers(
    kind: str, source: bytes, event_id: str, time: str, key: str
) -> list[tuple[str, bytes]]:
    """An event's CloudEvents Kafka-binding headers (binary mode: the body is the data)."""
    return [
        _SPECVERSION,
        ("ce_id", event_id.encode()),
        ("ce_type", _CE_TYPES[kind]),
        ("ce_source", source),
        ("ce_time", time.encode()),
        ("ce_subject", key.encode()),
        _CONTENT_TYPE,
    ]


def _crc32_partitioner() -> Any:
    from kafka.partitioner import Partitioner

    class Crc32Partitioner(Partitioner):  # type: ignore[misc]
        def partition(
            self,
            topic: str,
            key: Any,
            serialized_key: bytes | None,
            value: Any,
            serialized_value: Any,
            cluster: Any,
        ) -> int:
            parts = cluster.partitions_for_topic(topic)
            if not parts:
                raise ValueError(f"topic {topic} not found in the cluster metadata")
            return crc32_partition(serialized_key or b"", sorted(parts))

    return Crc32Partitioner()


# The sender's shortest wait while a connection is being set up (see _net_client).
CONNECTING_POLL_MS = 50.0


def _net_client() -> Any:
    """kafka-python's network client with its connection delay in the unit the sender reads.

    The sender (kafka/producer/sender.py) takes `connection_delay()` as milliseconds,
    but the connection manager answers seconds, and 0 while a connection is being set
    up. Against a hung broker (the kernel accepts the TCP connection, the process
    never answers) every new connection sits in that state until its setup timeout, so
    the sender polled with a timeout of 0 and spun a whole core (the busy loop of
    dpkp/kafka-python#1907, measured here at 0.9-1.0 core). Answering milliseconds,
    at least CONNECTING_POLL_MS, makes it wait as the Java client does.
    """
    from kafka.net.compat import KafkaNetClient

    class WaitingNetClient(KafkaNetClient):  # type: ignore[misc]
        def connection_delay(self, node_id: Any) -> float:
            seconds: float = super().connection_delay(node_id)
            return max(seconds * 1000.0, CONNECTING_POLL_MS)

    return WaitingNetClient


def reachable(servers: list[str], timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to one of the bootstrap servers opens."""
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or server, int(port)), timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


class KafkaSink:
    """Spool first, then Kafka: nothing accepted is lost to a broker outage or a restart."""

    def __init__(
        self,
        kafka: KafkaSettings,
        spool: SpoolSettings,
        registry: Registry,
        *,
        make_producer: Any = None,
    ) -> None:
        cfg = producer_config(kafka)
        self._stats = SinkStats(registry)
        self._invalid = self._stats.dropped("invalid")
        self.gaps = GapLedger(registry)
        self.spool = Spool(
            spool.directory,
            registry,
            max_bytes=spool.max_bytes,
            segment_bytes=spool.segment_bytes,
            on_full=spool.on_full,
            fsync=spool.fsync,
            fsync_interval_s=spool.fsync_interval_ms / 1000,
            on_drop=self._spool_dropped,
        )
        # Answered against handed over, in a file beside the spool: a SIGKILL leaves a trace.
        self.crash = CrashLedger(spool.directory)
        self.spool.crash = self.gaps.crash = self.crash
        topics = {
            "decision": kafka.topic_decisions,
            "explanation": kafka.topic_explanations,
            "review": kafka.topic_reviews,
            "gap": kafka.topic_gaps,
            "outcome": kafka.topic_outcomes,
        }
        source = kafka.source.encode()

        def headers(rec: Record) -> list[tuple[str, bytes]]:
            return cloudevent_headers(rec.kind, source, rec.event_id, rec.time, rec.key)

        self.delivery = Delivery(
            self.spool,
            make_producer or partial(new_producer, cfg),
            topics,
            headers,
            registry,
            max_in_flight=kafka.max_in_flight_events,
            retry_backoff_s=kafka.retry_backoff_ms / 1000,
            request_timeout_s=kafka.request_timeout_ms / 1000,
            delivery_timeout_s=kafka.delivery_timeout_ms / 1000,
            probe=None if make_producer else partial(reachable, cfg["bootstrap_servers"]),
        )
        self._started = False

    def start(self) -> None:
        client_log = logging.getLogger("kafka")
        if client_log.level == logging.NOTSET:
            # kafka-python logs an ERROR per failed connection attempt; during an outage
            # that is a flood. The sink logs outages itself and counts them in
            # sidecar_producer_errors_total; set the "kafka" logger's level to see the client's.
            client_log.setLevel(logging.CRITICAL)
        self.spool.open()
        loss = self.crash.open(self.spool.next_seq)
        if loss is not None:
            self.gaps.note(loss.reason, "decision", loss.decisions, (), loss.last, loss.first)
        self.delivery.start()
        self.gaps.start(lambda key, body: self.publish("gap", key, body))
        self._started = True

    def _spool_dropped(self, reason: str, kind: str, key: str) -> None:
        if kind != "gap":  # a refused gap record stays pending in the ledger
            self.gaps.note(reason, kind, 1, (key,))

    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        self._stats.published[kind].inc()
        try:
            data = events.dumps(body)
            eid, when = body["event_id"], body["time"]
        except (TypeError, KeyError, ValueError):
            self._invalid.inc()
            if kind != "gap":
                self.gaps.note("invalid", kind, 1, (key,))
            log.warning(
                "kafka sink: a %s event for %s lacks event_id/time or is not JSON", kind, key
            )
            return False
        if kind == "decision":
            counted = 1
        elif kind == "gap":
            counted = body.get("by_kind", {}).get("decision", 0)
        else:
            counted = 0
        try:
            return self.spool.append(
                kind,
                key,
                eid,
                when,
                data,
                force=kind == "gap",
                reserved=kind == "review",
                counted=counted,
            )
        except ValueError:  # over the record size limit, or an over-long key
            self._invalid.inc()
            if kind != "gap":
                self.gaps.note("invalid", kind, 1, (key,))
            log.warning("kafka sink: a %s event for %s is too large for the spool", kind, key)
            return False

    def publish_many(self, kind: EventKind, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        return sum(self.publish(kind, key, body) for key, body in items)

    def ready(self) -> bool:
        return self._started and not self.spool.closed

    def has_room(self, pending: int = 0) -> bool:
        # Room for the `pending` decisions admitted and not yet written, and a margin for the
        # calls in flight: the check runs before forwarding, the events are written later.
        sp = self.spool
        margin = min(_ROOM_BYTES, sp.max_bytes // 16)
        return sp.has_room(margin + int(pending * sp.mean_record_bytes))

    def health(self) -> dict[str, bool]:
        return {
            "kafka_delivery": self.delivery.alive(),
            "spool_fsync": self.spool.fsync_alive(),
            "spool_disk": self.spool.disk_error is None,
            "gap_records": self.gaps.alive(),
        }

    def refuse_new(self) -> None:
        self.spool.stop_writers()

    def close(self, timeout_s: float = 5.0) -> None:
        if not self._started:
            return
        # Gap records first, while the spool is open: they are the only trace of a loss.
        self.gaps.close()
        self.delivery.stop(timeout_s)
        self.spool.close()
        self.crash.close()
