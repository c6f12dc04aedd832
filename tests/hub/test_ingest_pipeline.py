"""The pipelined consumer: a write that fails on the writing thread starts the session over from
the committed offsets, and every event is stored once. A real broker and a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from sidecar.config import load_settings
from sidecar.hub import schema
from sidecar.hub.db import connect
from sidecar.hub.ingest import Ingest
from sidecar.metrics import Registry
from tests.hub.hubkit import count, decision, decision_message, produce
from tests.kafka_broker import KafkaBroker
from tests.postgres_server import PostgresServer
from tests.servers import wait_until


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database()
    with connect(url) as conn:
        schema.migrate(conn)
    yield url
    postgres_server.drop_database(url)


def _ingest(url: str, broker: KafkaBroker, topic: str, registry: Registry) -> Ingest:
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        environ={},
        overrides={
            "kafka": {
                "bootstrap_servers": broker.bootstrap,
                "topic_decisions": topic,
                "topic_explanations": f"{topic}.e",
                "topic_reviews": f"{topic}.r",
            },
            "hub": {"group_id": f"g{tag}", "batch_max_events": 100, "poll_timeout_ms": 50},
        },
    )
    return Ingest(database_url=url, kafka=settings.kafka, hub=settings.hub, registry=registry)


def _metric(registry: Registry, name: str) -> float:
    total = 0.0
    for line in registry.render().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_write_that_fails_on_the_writing_thread_loses_and_doubles_nothing(
    kafka_broker: KafkaBroker, database: str
) -> None:
    topic = f"p{uuid.uuid4().hex[:8]}.decisions"
    kafka_broker.create_topics(topic, f"{topic}.e", f"{topic}.r")
    n = 3000
    ds = [decision() for _ in range(n)]
    messages = [(topic, d.decision_id, decision_message(d)) for d in ds]
    produce(kafka_broker.bootstrap, messages[:2000])
    registry = Registry()
    ingest = _ingest(database, kafka_broker, topic, registry)
    ingest.start()
    try:
        wait_until(lambda: count(database, "decisions") >= 300, timeout_s=60, what="some rows")
        # The writer's connection dies under it (as when PostgreSQL restarts): its batch fails
        # on the writing thread, and the polling thread must start the session over.
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'sidecar-hub-ingest'"
            )
        # Events after the kill: the next batch is written on the dead connection.
        produce(kafka_broker.bootstrap, messages[2000:])
        wait_until(
            lambda: count(database, "decisions") >= n, timeout_s=90, what="every event stored"
        )
    finally:
        ingest.stop()
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM decisions").fetchone()
    assert row == (n, n)
    assert _metric(registry, "sidecar_hub_ingest_errors_total") >= 1
    assert not ingest.alive()
