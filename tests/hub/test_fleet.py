"""The fleet, end to end: a real broker, a real PostgreSQL, two model servers each behind its own
sidecar (review.store = "hub"), and two hubs in one consumer group.

Every decision can be looked up at either hub by id and by request id; a
claim at one hub makes a second reviewer's claim at the other 409; a hub
SIGKILLed in the middle of ingest and restarted leaves as many rows as there
are distinct event ids in the topics; the one audit chain verifies.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest

from sidecar.service import Service
from tests.hub.hubkit import ALICE, AUDITOR, BOB, ROOT, TOKENS, bearer, count, hub_process
from tests.kafka.test_through_proxy import FEATURES, request_body, v2_model
from tests.kafka_broker import KafkaBroker
from tests.postgres_server import PostgresServer
from tests.servers import recording_upstream, running_sidecar, wait_until


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def _send(svc: Service, first: int, n: int, tag: str) -> list[tuple[str, str]]:
    """n inference calls; (decision id, request id) of each. Every fifth asks for review."""
    host, port = svc.proxy_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    out = []
    try:
        for i in range(first, first + n):
            rid = f"{tag}-{i}"
            headers = {"content-type": "application/json", "x-request-id": rid}
            if i % 5 == 0:
                headers["x-review"] = "1"
            conn.request("POST", "/v2/models/credit/infer", body=request_body(i), headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            out.append((f"{resp.getheader('x-decision-id')}/0", rid))
    finally:
        conn.close()
    return out


def _distinct(broker: KafkaBroker, topic: str, at_least: int) -> int:
    records = broker.consume(topic, until=at_least, timeout_s=60)
    return len({dict(r.headers)["ce_id"] for r in records})


def test_two_sidecars_two_hubs_one_queue_one_chain(
    kafka_broker: KafkaBroker, kafka_topics: dict[str, str], database: str, tmp_path: Path
) -> None:
    topics = dict(kafka_topics)
    group = f"g{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        sidecars: list[Service] = []
        for _ in range(2):
            up = stack.enter_context(recording_upstream())
            up.routes["/v2/models/credit/infer"] = v2_model
            svc = stack.enter_context(
                running_sidecar(
                    up.url,
                    model={"feature_names": FEATURES},
                    sink={"kind": "kafka"},
                    kafka={"bootstrap_servers": kafka_broker.bootstrap, "linger_ms": 5, **topics},
                    spool={"directory": str(tmp_path / f"spool{len(sidecars)}"), "fsync": "never"},
                    review={"store": "hub", "confidence_below": None},
                    auth={"tokens": TOKENS},
                )
            )
            sidecars.append(svc)
        _, hub_a = stack.enter_context(hub_process(database, kafka_broker.bootstrap, topics, group))
        proc_b, hub_b = stack.enter_context(
            hub_process(database, kafka_broker.bootstrap, topics, group)
        )

        made = _send(sidecars[0], 0, 100, "one") + _send(sidecars[1], 0, 100, "two")

        # Every decision at either hub, by id and by request id, within a few seconds.
        wait_until(
            lambda: count(database, "decisions") >= len(made),
            timeout_s=30,
            what="every decision at the hubs",
        )
        with httpx.Client(headers=bearer(ALICE), timeout=10) as client:
            for base in (hub_a, hub_b):
                for did, rid in made[::7]:
                    r = client.get(f"{base}/decisions/{did}")
                    assert r.status_code == 200, r.text
                    page = client.get(f"{base}/decisions", params={"request_id": rid}).json()
                    assert [d["decision_id"] for d in page["decisions"]] == [did]
            # The sidecars themselves keep no queue: review is at the hub.
            assert client.get(f"{sidecars[0].control_url}/review/items").json()["items"] == []

            # One queue: an item routed by either sidecar, claimed at hub A, refused at hub B.
            wait_until(
                lambda: count(database, "review_items") >= 40,
                timeout_s=30,
                what="the review requests at the hubs",
            )
            items = client.get(f"{hub_b}/review/items", params={"limit": 100}).json()["items"]
            assert len(items) == 40
            target = items[0]["item_id"]
            assert client.post(f"{hub_a}/review/items/{target}/claim").status_code == 200
            refused = client.post(f"{hub_b}/review/items/{target}/claim", headers=bearer(BOB))
            assert refused.status_code == 409
            decided = client.post(
                f"{hub_b}/review/items/{target}/decision",
                json={"action": "override", "outcome": "0", "reason": "income verified"},
            )
            assert decided.status_code == 200, decided.text

        # A hub SIGKILLed in the middle of ingest, then restarted in the same group.
        burst: list[list[tuple[str, str]]] = [[], []]
        senders = [
            threading.Thread(
                target=lambda i=i: burst[i].extend(_send(sidecars[i], 1000, 600, f"burst{i}"))
            )
            for i in range(2)
        ]
        for t in senders:
            t.start()
        before = count(database, "decisions")
        wait_until(
            lambda: count(database, "decisions") > before,
            timeout_s=30,
            what="the burst to reach the hubs",
            interval_s=0.005,
        )
        proc_b.send_signal(signal.SIGKILL)
        proc_b.wait(10)
        assert count(database, "decisions") < len(made) + 1200, "killed after the burst was in"
        for t in senders:
            t.join(60)
        stack.enter_context(hub_process(database, kafka_broker.bootstrap, topics, group))

        sent = len(made) + sum(len(b) for b in burst)
        wait_until(
            lambda: count(database, "decisions") >= sent,
            timeout_s=90,
            what="the hubs to catch up after the kill",
            interval_s=0.1,
        )
        decisions = _distinct(kafka_broker, topics["topic_decisions"], sent)
        # 280 requests from the sidecars, and the claim and the override the hubs relayed.
        reviews = _distinct(kafka_broker, topics["topic_reviews"], 40 + 240 + 2)
        wait_until(
            lambda: count(database, "review_events") >= reviews,
            timeout_s=60,
            what="every review event at the hubs",
        )
        with psycopg.connect(database) as conn:
            rows = conn.execute(
                "SELECT (SELECT count(*) FROM decisions), (SELECT count(DISTINCT event_id) FROM decisions),"
                " (SELECT count(*) FROM review_events), (SELECT count(*) FROM review_items)"
            ).fetchone()
        assert rows == (decisions, decisions, reviews, reviews - 2)
        assert decisions == sent

        # The one chain verifies: over HTTP at either hub and with the command.
        verdict = httpx.get(f"{hub_a}/review/audit/verify", headers=bearer(AUDITOR)).json()
        assert verdict["ok"], verdict
        # "requested" for every item, then "claimed" and "overridden" for one.
        assert verdict["count"] == reviews
        done = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "audit", "verify", "--hub", "--json"],
            env={"SIDECAR_HUB__DATABASE_URL": database, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"]
