"""Ingest from a real broker into a real PostgreSQL: exactly-once effect from at-least-once delivery.

The hubs run as processes of their own (`sidecar hub`), so one can be SIGKILLed
in the middle of its work, as the orchestrator or the kernel would.
"""

from __future__ import annotations

import re
import signal
import uuid

import httpx
import psycopg
import pytest

from tests.hub.hubkit import count, decision, decision_message, hub_process, produce
from tests.kafka_broker import KafkaBroker
from tests.postgres_server import PostgresServer
from tests.servers import wait_until


def _topics(broker: KafkaBroker, partitions: int) -> dict[str, str]:
    from kafka.admin import KafkaAdminClient, NewTopic

    tag = uuid.uuid4().hex[:10]
    topics = {
        "topic_decisions": f"h{tag}.decisions",
        "topic_explanations": f"h{tag}.explanations",
        "topic_reviews": f"h{tag}.reviews",
    }
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="tests")
    try:
        admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in topics.values()]
        )
    finally:
        admin.close()
    # Every partition known to the cluster's metadata before the hubs subscribe: a consumer
    # that subscribed earlier sees fewer partitions until its next metadata refresh (5 min by
    # default), and on a broker busy with the rest of the suite creation can lag that long.
    from kafka import KafkaConsumer

    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, client_id="tests")
    try:
        wait_until(
            # topics() fetches the metadata afresh; partitions_for_topic reads what it fetched.
            lambda: (
                bool(probe.topics())
                and all(
                    len(probe.partitions_for_topic(t) or ()) == partitions for t in topics.values()
                )
            ),
            timeout_s=60,
            what="the new topics' partitions in the cluster's metadata",
            interval_s=0.2,
        )
    finally:
        probe.close()
    return topics


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M):
        total += float(m.group(1))
    return total


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def test_a_hub_killed_mid_ingest_and_restarted_stores_each_event_once(
    kafka_broker: KafkaBroker, database: str
) -> None:
    topics = _topics(kafka_broker, 2)
    n = 20_000
    ds = [decision(request_id=f"r{i % 97}") for i in range(n)]
    messages = [(topics["topic_decisions"], d.decision_id, decision_message(d)) for d in ds]
    # At least once from the producers' side too: a tenth of the events arrive twice.
    messages += messages[:2000]
    produce(kafka_broker.bootstrap, messages)
    group = f"g{uuid.uuid4().hex[:8]}"
    # Small transactions, so there are many commits to be killed between.
    with hub_process(
        database, kafka_broker.bootstrap, topics, group, SIDECAR_HUB__BATCH_MAX_EVENTS="200"
    ) as (proc, _):
        wait_until(
            lambda: count(database, "decisions") >= 2000,
            timeout_s=60,
            what="the hub to have written some",
            interval_s=0.005,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    at_kill = count(database, "decisions")
    assert at_kill < n, "the hub finished before it was killed: nothing was tested"
    with hub_process(database, kafka_broker.bootstrap, topics, group) as (_, base):
        wait_until(
            lambda: count(database, "decisions") >= n,
            timeout_s=120,
            what="the restarted hub to catch up",
            interval_s=0.1,
        )
        # Whatever it had written but not committed the offsets of came again.
        wait_until(lambda: _metric(base, "sidecar_hub_events_total") > 0, what="metrics")
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM decisions").fetchone()
    assert row == (n, n)


def test_two_hubs_in_one_group_share_the_partitions_and_store_each_event_once(
    kafka_broker: KafkaBroker, database: str
) -> None:
    topics = _topics(kafka_broker, 4)
    group = f"g{uuid.uuid4().hex[:8]}"
    with (
        hub_process(database, kafka_broker.bootstrap, topics, group) as (_, a),
        hub_process(database, kafka_broker.bootstrap, topics, group) as (_, b),
    ):
        # 12 partitions (4 per topic) between two members: each gets some once the group settles.
        wait_until(
            lambda: (
                _metric(a, "sidecar_hub_partitions_assigned") > 0
                and _metric(b, "sidecar_hub_partitions_assigned") > 0
                and _metric(a, "sidecar_hub_partitions_assigned")
                + _metric(b, "sidecar_hub_partitions_assigned")
                == 12
            ),
            timeout_s=60,
            what="both hubs to hold partitions",
            interval_s=0.2,
        )
        n = 4000
        ds = [decision() for _ in range(n)]
        produce(
            kafka_broker.bootstrap,
            [(topics["topic_decisions"], d.decision_id, decision_message(d)) for d in ds],
        )
        wait_until(
            lambda: count(database, "decisions") >= n,
            timeout_s=60,
            what="both hubs to store every event",
            interval_s=0.1,
        )
        assert _metric(a, "sidecar_hub_events_total") > 0
        assert _metric(b, "sidecar_hub_events_total") > 0
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM decisions").fetchone()
    assert row == (n, n)
