"""Reading the event topics from Kafka: this instance's partitions, from the beginning, up to the end.

Instance i of n takes partition p of every topic when p mod n = i (assigned, not
through a consumer group): the sidecar keys every event by its decision id and
partitions by CRC-32 of the key, so with equal partition counts a decision and
every event about it (its outcome weeks later included) land in the same
partition number of their topics, and so with the same instance. The assignment
never moves, so no instance's state has to be handed over. The continuous
monitor keeps one state per partition number and stores it with that
partition's offsets (`sidecar.monitor.checkpoint`): `resume` tells the tail
where each newly assigned partition goes on from (from the beginning where it
has no checkpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
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
        resume: Callable[[int], Mapping[str, int]] | None = None,
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
        self._resume = resume

    def check_partitions(self) -> None:
        """Refuse topics that could put a decision and its events in different partition numbers.

        The sidecar partitions by the key's hash modulo the partition count, so only topics
        with equal counts put a decision's outcome (explanation, review) in the decision's
        partition number, and so in the state that holds the decision."""
        counts = {
            topic: len(parts)
            for kind, topic in self.topics.items()
            if kind != "gaps" and (parts := self.consumer.partitions_for_topic(topic))
        }
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{t}: {n}" for t, n in sorted(counts.items()))
            raise ValueError(
                "the event topics have different partition counts"
                f" ({listed}); the monitor joins a decision and the events about it by"
                " partition number: give the topics the same count"
            )

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
            if self._resume is None:
                self.consumer.seek_to_beginning(*new)
            else:
                self.check_partitions()
                for p in sorted({tp.partition for tp in new}):
                    offsets = self._resume(p)
                    for tp in (tp for tp in new if tp.partition == p):
                        if tp.topic in offsets:
                            self.consumer.seek(tp, offsets[tp.topic])
                        else:
                            self.consumer.seek_to_beginning(tp)
            self._assigned = wanted

    def positions(self, partition: int) -> dict[str, int]:
        """Topic -> next offset to read, of the assigned partitions numbered `partition`."""
        return {
            tp.topic: self.consumer.position(tp)
            for tp in self._assigned
            if tp.partition == partition
        }

    def read(self, deadline_s: float = 60.0) -> Iterator[dict[str, Any]]:
        """Every record of the assigned partitions up to their end offsets as of this call."""
        for _, events, invalid in self.read_partitions(deadline_s):
            self.invalid += invalid
            yield from events

    def read_partitions(
        self, deadline_s: float = 60.0
    ) -> Iterator[tuple[int, list[dict[str, Any]], int]]:
        """As `read`, a fetched batch at a time: (partition number, its events, invalid records)."""
        self._assign()
        if not self._assigned:
            return
        end = self.consumer.end_offsets(list(self._assigned))
        behind = {tp for tp in self._assigned if self.consumer.position(tp) < end[tp]}
        give_up = time.monotonic() + deadline_s
        limit = self.max_event_bytes
        while behind and time.monotonic() < give_up:
            batch = self.consumer.poll(timeout_ms=200, max_records=10_000)
            for tp, records in batch.items():
                events: list[dict[str, Any]] = []
                invalid = 0
                for rec in records:
                    value = rec.value
                    if value is None or len(value) > limit:
                        invalid += 1
                        continue
                    try:
                        ev = orjson.loads(value)
                    except orjson.JSONDecodeError:
                        invalid += 1
                        continue
                    if isinstance(ev, dict):
                        events.append(ev)
                    else:
                        invalid += 1
                yield tp.partition, events, invalid
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
