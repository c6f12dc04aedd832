"""Reading the event topics from Kafka: this instance's partitions, from the beginning, up to the end.

Instance i of n takes partition p of every topic when p mod n = i (assigned, not
through a consumer group): the sidecar keys every event by its decision id and
partitions by CRC-32 of the key, so with equal partition counts a decision and
every event about it (its outcome weeks later included) land in the same
partition number of their topics, and so with the same instance. The assignment
never moves, so no instance's state has to be handed over. A restarted instance
reads its partitions again from the beginning (what retention keeps).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson

from sidecar.config.sections import KafkaSettings
from sidecar.sinks.kafka import producer_config

log = logging.getLogger("sidecar.monitor.kafka")
_PRODUCER_ONLY = {
    "acks",
    "partitioner",
    "kafka_client",
    "linger_ms",
    "batch_size",
    "compression_type",
}


def client_config(k: KafkaSettings, bootstrap: str) -> dict[str, Any]:
    """Connection and security options of `[kafka]`, for a consumer or a plain producer."""
    from kafka import KafkaConsumer

    cfg = producer_config(k)
    out = {
        name: value
        for name, value in cfg.items()
        if name in KafkaConsumer.DEFAULT_CONFIG and name not in _PRODUCER_ONLY
    }
    out["bootstrap_servers"] = [s.strip() for s in bootstrap.split(",") if s.strip()]
    return out


class KafkaTail:
    """Follows this instance's partitions of the event topics."""

    def __init__(
        self,
        k: KafkaSettings,
        bootstrap: str,
        topics: dict[str, str],
        *,
        instance: int,
        instances: int,
        max_event_bytes: int,
    ) -> None:
        from kafka import KafkaConsumer

        self.topics = topics
        self._instance, self._instances = instance, instances
        self.max_event_bytes = max_event_bytes
        self.invalid = 0
        cfg = client_config(k, bootstrap)
        self.consumer = KafkaConsumer(
            **cfg,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(max_event_bytes, 1024 * 1024),
        )
        self._assigned: set[Any] = set()

    def _assign(self) -> None:
        from kafka import TopicPartition

        wanted = set(self._assigned)
        for topic in self.topics.values():
            parts = self.consumer.partitions_for_topic(topic) or set()
            wanted |= {
                TopicPartition(topic, p) for p in parts if p % self._instances == self._instance
            }
        if wanted != self._assigned:
            new = wanted - self._assigned
            self.consumer.assign(sorted(wanted))
            self.consumer.seek_to_beginning(*new)
            self._assigned = wanted

    def read(self, deadline_s: float = 60.0) -> Iterator[dict[str, Any]]:
        """Every record of the assigned partitions up to their end offsets as of this call."""
        self._assign()
        if not self._assigned:
            return
        end = self.consumer.end_offsets(list(self._assigned))
        behind = {tp for tp in self._assigned if self.consumer.position(tp) < end[tp]}
        give_up = time.monotonic() + deadline_s
        limit = self.max_event_bytes
        while behind and time.monotonic() < give_up:
            batch = self.consumer.poll(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                for rec in records:
                    value = rec.value
                    if value is None or len(value) > limit:
                        self.invalid += 1
                        continue
                    try:
                        ev = orjson.loads(value)
                    except orjson.JSONDecodeError:
                        self.invalid += 1
                        continue
                    if isinstance(ev, dict):
                        yield ev
                    else:
                        self.invalid += 1
            behind = {tp for tp in behind if self.consumer.position(tp) < end[tp]}
        if behind:
            log.warning("monitor: %d partitions still behind after %.0f s", len(behind), deadline_s)

    def close(self) -> None:
        self.consumer.close()


class KafkaAlerts:
    """Alert events to `monitor.topic_alerts`, keyed by their event id."""

    def __init__(self, k: KafkaSettings, bootstrap: str, topic: str) -> None:
        from kafka import KafkaProducer

        self._topic = topic
        self._producer = KafkaProducer(**client_config(k, bootstrap), acks="all")

    def write(self, lines: bytes) -> None:
        for line in lines.splitlines():
            if line:
                key = orjson.loads(line)["event_id"].encode()
                self._producer.send(self._topic, key=key, value=line)
        self._producer.flush(10)

    def close(self) -> None:
        self._producer.close(5)
