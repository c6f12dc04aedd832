"""pytest plugin: a real single-node Apache Kafka (KRaft) on loopback for the whole session.

`scripts/kafka.sh` fetches the broker's jars from Maven Central once (cached
under `.cache/kafka/`), formats a data directory and starts it; readiness is
polled, never slept for. Register with `pytest_plugins = ["kafka_broker"]`.
Fixtures: `kafka_broker` (session) and `kafka_topics` (fresh topic names).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "kafka.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_bootstrap() -> str:
    """host:port where nothing listens: a broker that is down from the start."""
    return f"127.0.0.1:{free_port()}"


@dataclass
class KafkaBroker:
    port: int
    controller_port: int
    data: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str, timeout: float = 180) -> None:
        proc = subprocess.run(
            [str(SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed: {proc.stderr[-2000:]}")

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def running(self) -> bool:
        return subprocess.run([str(SCRIPT), "status"], env=self.env, check=False).returncode == 0

    def create_topics(self, *names: str) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="tests")
        try:
            admin.create_topics(
                [NewTopic(n, num_partitions=1, replication_factor=1) for n in names]
            )
        finally:
            admin.close()

    def consume(
        self,
        topic: str,
        until: int,
        timeout_s: float = 60.0,
        *,
        distinct: bool = True,
    ) -> list[Any]:
        """Records of `topic` from the beginning, until `until` distinct event ids (or records)."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        out: list[Any] = []
        seen: set[bytes] = set()
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    for rec in batch:
                        out.append(rec)
                        seen.add(dict(rec.headers).get("ce_id", b"") if distinct else rec.offset)
                if len(seen) >= until:
                    # One more short poll catches records that arrive right behind.
                    for batch in consumer.poll(timeout_ms=300).values():
                        out.extend(batch)
                    break
        finally:
            consumer.close()
        return out


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    port, cport = free_port(), free_port()
    data = tmp_path_factory.mktemp("kafka")
    env = dict(os.environ)
    env.update(
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(cport),
        KAFKA_DATA=str(data),
        KAFKA_STOP_TIMEOUT="20",
    )
    broker = KafkaBroker(port, cport, data, env)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_topics(kafka_broker: KafkaBroker) -> dict[str, str]:
    """Fresh topics (created up front) for one test, named like the sidecar's settings keys."""
    tag = uuid.uuid4().hex[:10]
    topics = {
        "topic_decisions": f"t{tag}.decisions",
        "topic_explanations": f"t{tag}.explanations",
        "topic_reviews": f"t{tag}.reviews",
        "topic_gaps": f"t{tag}.gaps",
    }
    kafka_broker.create_topics(*topics.values())
    return topics
