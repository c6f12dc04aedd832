"""The hub's API over a real PostgreSQL: lookup and search, review across hubs, the one audit chain.

Two hub apps share one database, as two hub replicas behind a Service do;
the events are written by the ingest writer, as the consumer would.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from sidecar.config import load_settings
from sidecar.control.auth import authenticator_from_settings
from sidecar.decisions import Decision, new_call_id
from sidecar.hub import schema
from sidecar.hub.app import MAX_GROUP_FILTERS, create_hub_app
from sidecar.hub.db import Conn, async_pool, connect, pool
from sidecar.hub.lookup import HubDecisions
from sidecar.hub.review import HubReviewStore
from sidecar.hub.rows import Rows, add
from sidecar.hub.writer import Writer
from sidecar.metrics import Registry
from sidecar.review.model import Conflict
from tests.hub.hubkit import (
    ALICE,
    AUDITOR,
    BOB,
    ROOT,
    TOKENS,
    as_json,
    bearer,
    decision,
    decision_message,
    explanation_message,
    request_message,
)

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC).timestamp()


@dataclass
class Hubs:
    url: str
    a: TestClient
    b: TestClient
    store_a: HubReviewStore
    store_b: HubReviewStore
    clock: list[float]

    def write(self, *messages: tuple[str, bytes]) -> None:
        rows = Rows()
        for kind, value in messages:
            add(rows, kind, value)
        with connect(self.url) as conn:
            Writer(conn).write(rows)


def _app(url: str, clock: list[float]) -> tuple[TestClient, HubReviewStore, ConnectionPool[Conn]]:
    settings = load_settings(environ={}, overrides={"auth": {"tokens": TOKENS}})
    registry = Registry()
    p = pool(url, 4)
    store = HubReviewStore(p, registry=registry, lease_seconds=60.0, clock=lambda: clock[0])
    app = create_hub_app(
        authenticator=authenticator_from_settings(settings.auth),
        review=settings.review,
        store=store,
        decisions=HubDecisions(p),
        lookup_pool=async_pool(url, 2),
        registry=registry,
        ready_checks=[],
    )
    return TestClient(app), store, p


@pytest.fixture(scope="module")
def hubs(hub_database: str) -> Iterator[Hubs]:
    with connect(hub_database) as conn:
        schema.migrate(conn)
    clock = [T0 + 3600]
    a, sa, pa = _app(hub_database, clock)
    b, sb, pb = _app(hub_database, clock)
    with a, b:  # each app's lifespan opens its lookup pool, on its client's one loop
        yield Hubs(hub_database, a, b, sa, sb, clock)
    pa.close()
    pb.close()


def _queued(hubs: Hubs) -> Decision:
    d = decision(review="queued", at=T0)
    hubs.write(("decision", decision_message(d)), ("review", request_message(d)))
    return d


def _path(d: Decision) -> str:
    return f"{d.call_id}/{d.row}"


def test_lookup_by_id_answers_at_either_hub_with_the_sampled_explanation(hubs: Hubs) -> None:
    d = decision(request_id="req-lookup", groups={"gender": "F"}, at=T0)
    hubs.write(("decision", decision_message(d)), ("explanation", explanation_message(d)))
    for client in (hubs.a, hubs.b):
        body = as_json(client.get(f"/decisions/{_path(d)}", headers=bearer(ALICE)))
        assert body["decision"]["decision_id"] == d.decision_id
        assert body["decision"]["time"] == pytest.approx(T0)
        assert body["explanation_source"] == "sampled"
        assert body["explanation"]["contributions"] == [[0.2, -0.1]]
        # A reviewer does not see group attributes; an auditor does (auth.group_attribute_roles).
        assert body["decision"]["group_attributes"] is None
    seen = as_json(hubs.a.get(f"/decisions/{d.call_id}", headers=bearer(AUDITOR)))
    assert seen["decision"]["group_attributes"] == {"gender": "F"}
    assert hubs.a.get(f"/decisions/{_path(d)}").status_code == 401
    assert hubs.a.get(f"/decisions/{new_call_id()}/0", headers=bearer(ALICE)).status_code == 404


def test_by_request_id_lists_every_call_a_page_at_a_time(hubs: Hubs) -> None:
    ds = [decision(request_id="req-paged", at=T0 + i) for i in range(5)]
    hubs.write(*(("decision", decision_message(d)) for d in ds))
    got: list[str] = []
    after: str | None = None
    while True:
        params = {"request_id": "req-paged", "limit": "2", **({"after": after} if after else {})}
        page = as_json(hubs.b.get("/decisions", params=params, headers=bearer(ALICE)))
        got += [x["decision_id"] for x in page["decisions"]]
        after = page["next_after"]
        if after is None:
            break
    assert got == sorted(d.decision_id for d in ds)


def test_search_by_model_time_range_and_group(hubs: Hubs) -> None:
    day = T0 + 10 * 86_400
    ds = [
        decision(model="fraud", groups={"region": "north"}, at=day),
        decision(model="fraud", groups={"region": "south"}, at=day + 60),
        decision(model="fraud", groups={"region": "north"}, at=day + 2 * 86_400),
    ]
    hubs.write(*(("decision", decision_message(d)) for d in ds))
    since = dt.datetime.fromtimestamp(day - 1, dt.UTC).isoformat()
    until = dt.datetime.fromtimestamp(day + 86_400, dt.UTC).isoformat()
    params = {"model": "fraud", "since": since, "until": until}
    page = as_json(hubs.a.get("/decisions", params=params, headers=bearer(ALICE)))
    assert {x["decision_id"] for x in page["decisions"]} == {ds[0].decision_id, ds[1].decision_id}
    grouped = {"model": "fraud", "group": "region=north"}
    page = as_json(hubs.a.get("/decisions", params=grouped, headers=bearer(AUDITOR)))
    assert {x["decision_id"] for x in page["decisions"]} == {ds[0].decision_id, ds[2].decision_id}
    # Group attributes are protected: only the roles that may see them may filter by them.
    assert hubs.a.get("/decisions", params=grouped, headers=bearer(ALICE)).status_code == 403


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"model": "fraud", "colour": "red"},
        {"model": "fraud", "group": "region"},
        {"since": "2026-11-20T12:00:00"},
        {"model": "fraud", "limit": "101"},
        {"request_id": "x" * 129},
    ],
)
def test_search_refuses_bad_parameters(hubs: Hubs, params: dict[str, str]) -> None:
    assert hubs.a.get("/decisions", params=params, headers=bearer(AUDITOR)).status_code == 422


def test_search_takes_at_most_the_documented_group_filters(hubs: Hubs) -> None:
    groups = [("group", f"g{i}=v") for i in range(MAX_GROUP_FILTERS + 1)]
    assert hubs.a.get("/decisions", params=groups, headers=bearer(AUDITOR)).status_code == 422
    ok = groups[:MAX_GROUP_FILTERS]
    assert hubs.a.get("/decisions", params=ok, headers=bearer(AUDITOR)).status_code == 200


def test_a_claim_at_one_hub_makes_a_second_claim_at_the_other_409(hubs: Hubs) -> None:
    d = _queued(hubs)
    path = f"/review/items/{_path(d)}"
    assert as_json(hubs.a.post(f"{path}/claim", headers=bearer(ALICE)))["claimed_by"] == "alice"
    refused = hubs.b.post(f"{path}/claim", headers=bearer(BOB))
    assert refused.status_code == 409
    assert "alice" in refused.json()["detail"]
    # The holder decides at the other hub: the state is the database's, not a hub's.
    decided = hubs.b.post(
        f"{path}/decision",
        headers=bearer(ALICE),
        json={"action": "approve", "reason": "checked the income"},
    )
    assert as_json(decided)["status"] == "decided"
    history = as_json(hubs.a.get(f"{path}/history", headers=bearer(AUDITOR)))
    assert [r["action"] for r in history["records"]] == ["requested", "claimed", "approved"]


def test_concurrent_claims_across_hubs_have_one_winner(hubs: Hubs) -> None:
    d = _queued(hubs)
    stores = [hubs.store_a, hubs.store_b] * 4
    results: list[str] = []
    barrier = threading.Barrier(len(stores))

    def claim(i: int) -> None:
        barrier.wait()
        try:
            stores[i].claim(d.decision_id, f"reviewer{i}")
            results.append("won")
        except Conflict:
            results.append("409")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["409"] * (len(stores) - 1) + ["won"]


def test_a_lapsed_lease_returns_the_item_to_the_queue_at_every_hub(hubs: Hubs) -> None:
    d = _queued(hubs)
    hubs.store_a.claim(d.decision_id, "alice")
    hubs.clock[0] += 61
    item = hubs.store_b.get(d.decision_id)
    assert item is not None and item.status == "pending"
    assert [r.action for r in hubs.store_a.history(d.decision_id)][-1] == "lease_expired"
    assert hubs.store_b.claim(d.decision_id, "bob").claimed_by == "bob"


def test_an_item_whose_decision_has_not_arrived_is_not_shown(hubs: Hubs) -> None:
    d = decision(review="queued", at=T0)
    hubs.write(("review", request_message(d)))
    assert hubs.a.get(f"/review/items/{_path(d)}", headers=bearer(ALICE)).status_code == 404
    hubs.write(("decision", decision_message(d)))
    assert as_json(hubs.a.get(f"/review/items/{_path(d)}", headers=bearer(ALICE)))["status"] == (
        "pending"
    )


def test_the_chain_verifies_over_http_and_with_the_command_and_catches_an_edit(hubs: Hubs) -> None:
    _queued(hubs)
    verdict = as_json(hubs.b.get("/review/audit/verify", headers=bearer(AUDITOR)))
    assert verdict["ok"] and verdict["count"] >= 1
    env = {"SIDECAR_HUB__DATABASE_URL": hubs.url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sidecar.cli", "audit", "verify", "--hub", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == verdict["count"]
    with connect(hubs.url) as conn:
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 1")
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1
        assert json.loads(done.stdout)["bad_seq"] == 1
    finally:
        with connect(hubs.url) as conn:
            conn.execute("UPDATE audit SET actor = 'system' WHERE seq = 1")


def test_the_console_metrics_and_health_are_served_by_the_hub(hubs: Hubs) -> None:
    page = hubs.a.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert hubs.a.get("/console/console.js").status_code == 200
    assert hubs.a.get("/healthz").json() == {"status": "ok"}
    metrics = hubs.a.get("/metrics").text
    assert 'sidecar_review_items{status="pending"}' in metrics


def test_a_lookup_by_id_reads_only_the_days_around_the_time_its_id_carries(hubs: Hubs) -> None:
    from tests.hub.hubkit import call_id_at

    # Ten days of decisions: an id's lookup is bounded to a day either side of its id's time.
    days = [decision(at=T0 - k * 86_400) for k in range(10)]
    # An event whose time is three days from its id's (a broken clock): outside the window.
    skewed = decision(call_id=call_id_at(T0), at=T0 - 3 * 86_400)
    hubs.write(*(("decision", decision_message(d)) for d in [*days, skewed]))
    for d in days:
        assert hubs.a.get(f"/decisions/{_path(d)}", headers=bearer(ALICE)).status_code == 200
    assert hubs.a.get(f"/decisions/{_path(skewed)}", headers=bearer(ALICE)).status_code == 404
    with connect(hubs.url) as conn:
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                "EXPLAIN SELECT body FROM decisions WHERE decision_id = 'x/0'"
                " AND time >= to_timestamp(%s) AND time < to_timestamp(%s)",
                (T0 - 86_400, T0 + 86_400),
            ).fetchall()
        )
    read = set(re.findall(r"decisions_p\d{8}", plan))
    assert read == {"decisions_p20261119", "decisions_p20261120"}
    with connect(hubs.url) as conn:
        assert len(schema.partitions(conn, "decisions")) >= 10
