"""Review steps taken at the hubs reach the reviews topic: from the one audit chain, at least
once, in chain order, one hub at a time (a real PostgreSQL and a real broker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from psycopg_pool import ConnectionPool

from sidecar.config import KafkaSettings
from sidecar.hub import audit as chain
from sidecar.hub import schema
from sidecar.hub.db import Conn, connect, pool
from sidecar.hub.relay import ReviewRelay
from sidecar.hub.review import HubReviewStore
from sidecar.hub.rows import Rows, add
from sidecar.hub.writer import Writer
from sidecar.metrics import Registry
from sidecar.review.event_body import review_event_body
from tests.hub.hubkit import decision, decision_message, request_message
from tests.kafka_broker import KafkaBroker
from tests.servers import wait_until


@pytest.fixture(scope="module")
def database(hub_database: str) -> str:
    with connect(hub_database) as conn:
        schema.migrate(conn)
    return hub_database


@pytest.fixture
def api_pool(database: str) -> Iterator[ConnectionPool[Conn]]:
    p = pool(database, 2)
    try:
        yield p
    finally:
        p.close()


def _cursor(conn: Conn) -> int:
    row = conn.execute("SELECT audit_seq FROM hub_relay WHERE name = 'reviews'").fetchone()
    assert row is not None
    return int(row[0])


def _settle(conn: Conn) -> None:
    """Start each test with every earlier record published: move the cursor to the head."""
    conn.execute("UPDATE hub_relay SET audit_seq = %s", (chain.head(conn)[0],))


def _steps(store: HubReviewStore, conn: Conn, n: int) -> list[str]:
    """Route `n` decisions to review (through the writer, as ingest would), then claim,
    release, claim and decide each: the hub's steps. Their item ids."""
    made = [decision(review="queued") for _ in range(n)]
    rows = Rows()
    for d in made:
        add(rows, "decision", decision_message(d))
        add(rows, "review", request_message(d))
    Writer(conn).write(rows)
    ids = [f"{d.call_id}/{d.row}" for d in made]
    for i, d in enumerate(ids):
        store.claim(d, "alice")
        store.release(d, "alice")
        store.claim(d, "bob")
        store.decide(d, "bob", "approve" if i % 2 else "override", "0", "checked")
    return ids


def _kafka(broker: KafkaBroker, topic: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap, topic_reviews=topic, linger_ms=5)


def _expected(conn: Conn, after: int) -> list[dict[str, Any]]:
    records = chain.records(conn, after=after, limit=10_000)
    return [review_event_body(r) for r in records if r.action != "requested"]


def test_the_hubs_review_steps_are_published_in_chain_order(
    kafka_broker: KafkaBroker,
    kafka_topics: dict[str, str],
    database: str,
    api_pool: ConnectionPool[Conn],
) -> None:
    registry = Registry()
    store = HubReviewStore(api_pool, registry=registry)
    topic = kafka_topics["topic_reviews"]
    with connect(database) as conn:
        _settle(conn)
        start = _cursor(conn)
        ids = _steps(store, conn, 3)
        expected = _expected(conn, start)
        relay = ReviewRelay(
            database_url=database, kafka=_kafka(kafka_broker, topic), registry=registry
        )
        relay.start()
        try:
            records = kafka_broker.consume(topic, until=len(expected), timeout_s=60)
            wait_until(lambda: _cursor(conn) == chain.head(conn)[0], what="the cursor to move")
        finally:
            relay.stop()
    # Requests are the routing sidecar's to publish; every other step is here, once, in order.
    assert len(expected) == 4 * len(ids)
    got = [orjson.loads(r.value) for r in records]
    assert got == expected
    assert [r.key.decode() for r in records] == [e["decision_id"] for e in expected]
    for rec, body in zip(records, got, strict=True):
        headers = dict(rec.headers)
        assert headers["ce_id"] == body["event_id"].encode()
        assert headers["ce_type"] == b"org.explaining-sidecar.review.v1"
    assert [e["action"] for e in got[:4]] == ["claimed", "released", "claimed", "decided"]
    assert got[3]["reason"] == "override: checked" and got[3]["reviewer"] == "bob"
    text = registry.render()
    assert f"sidecar_hub_reviews_published_total {float(len(expected))}" in text
    assert "sidecar_hub_relay_backlog 0.0" in text


def test_one_hub_relays_at_a_time(
    kafka_broker: KafkaBroker,
    kafka_topics: dict[str, str],
    database: str,
    api_pool: ConnectionPool[Conn],
) -> None:
    topic = kafka_topics["topic_reviews"]
    store = HubReviewStore(api_pool, registry=Registry())
    relay = ReviewRelay(
        database_url=database, kafka=_kafka(kafka_broker, topic), registry=Registry()
    )
    try:
        with connect(database) as holder, connect(database) as conn:
            _settle(conn)
            _steps(store, conn, 1)
            before = _cursor(conn)
            # Another hub's relay holds the cursor's row in its turn: this one skips its turn.
            with holder.transaction():
                holder.execute("SELECT audit_seq FROM hub_relay FOR UPDATE")
                assert relay.relay_once(conn) == 0
            assert _cursor(conn) == before
            # Its turn over, this one publishes.
            assert relay.relay_once(conn) == chain.head(conn)[0] - before
            assert _cursor(conn) == chain.head(conn)[0]
    finally:
        relay.stop()


class _FailingFlush:
    """A real producer whose first flush fails after the sends went out, as a hub killed
    between the broker's acknowledgement and the cursor's commit would leave things."""

    failures = 1

    def __init__(self, real: Any) -> None:
        self._real = real

    def send(self, *args: Any, **kwargs: Any) -> Any:
        return self._real.send(*args, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self._real.flush(timeout)
        if _FailingFlush.failures:
            _FailingFlush.failures -= 1
            raise RuntimeError("lost before the cursor moved")

    def close(self, timeout: float | None = None) -> None:
        self._real.close(timeout)


def test_a_batch_that_fails_is_sent_again_under_the_same_event_ids(
    kafka_broker: KafkaBroker,
    kafka_topics: dict[str, str],
    database: str,
    api_pool: ConnectionPool[Conn],
) -> None:
    from kafka import KafkaProducer

    topic = kafka_topics["topic_reviews"]
    store = HubReviewStore(api_pool, registry=Registry())
    registry = Registry()

    def producer() -> _FailingFlush:
        return _FailingFlush(KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all"))

    relay = ReviewRelay(
        database_url=database,
        kafka=_kafka(kafka_broker, topic),
        registry=registry,
        make_producer=producer,
    )
    with connect(database) as conn:
        _settle(conn)
        start = _cursor(conn)
        _steps(store, conn, 2)
        expected = _expected(conn, start)
        relay.start()
        try:
            wait_until(lambda: _cursor(conn) == chain.head(conn)[0], 60, what="the retry")
        finally:
            relay.stop()
    # The failed turn's sends reached the broker and were sent again: each step is on the
    # topic twice, under one event id, and consumers de-duplicate on it.
    records = kafka_broker.consume(topic, until=2 * len(expected), timeout_s=30, distinct=False)
    ids = [dict(r.headers)["ce_id"].decode() for r in records]
    assert sorted(set(ids)) == sorted(e["event_id"] for e in expected)
    assert len(ids) == 2 * len(expected)
    assert "sidecar_hub_relay_errors_total 1.0" in registry.render()
