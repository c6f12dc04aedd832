"""The hub's lookup by id: the decision, its explanation and its review state in one statement.

Against a real PostgreSQL; events written by the ingest writer, as the consumer would.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from sidecar.config import load_settings
from sidecar.control.auth import authenticator_from_settings
from sidecar.control.lookup import Explanations
from sidecar.decisions import Decision
from sidecar.hub import schema
from sidecar.hub.db import Conn, connect, pool
from sidecar.hub.lookup import ID_WINDOW_S
from sidecar.hub.lookup_route import ONE_STATEMENT, create_lookup_router, find
from sidecar.hub.lookup_route import Lookup as RouteLookup
from sidecar.hub.review import HubReviewStore
from sidecar.hub.rows import Rows, add
from sidecar.hub.writer import Writer
from sidecar.metrics import Registry
from tests.hub.hubkit import (
    ALICE,
    TOKENS,
    as_json,
    bearer,
    decision,
    decision_message,
    explanation_message,
    request_message,
)

T0 = dt.datetime(2026, 11, 10, 12, 0, tzinfo=dt.UTC).timestamp()


class CountingPool:
    """A pool whose connections count the statements sent through them."""

    def __init__(self, inner: ConnectionPool[Conn]) -> None:
        self.inner = inner
        self.statements: list[str] = []

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self.inner.connection() as conn:
            yield _Counting(conn, self.statements)


class _Counting:
    def __init__(self, conn: Conn, seen: list[str]) -> None:
        self._conn, self._seen = conn, seen

    def execute(self, sql: Any, *args: Any, **kw: Any) -> Any:
        self._seen.append(sql.decode() if isinstance(sql, bytes) else str(sql))
        return self._conn.execute(sql, *args, **kw)


@dataclass
class Lookup:
    url: str
    client: TestClient
    counting: CountingPool
    store: HubReviewStore
    clock: list[float]

    def write(self, *messages: tuple[str, bytes]) -> None:
        rows = Rows()
        for kind, value in messages:
            add(rows, kind, value)
        with connect(self.url) as conn:
            Writer(conn, clock=lambda: self.clock[0]).write(rows)


@pytest.fixture(scope="module")
def hub(hub_database: str) -> Iterator[Lookup]:
    with connect(hub_database) as conn:
        schema.migrate(conn)
    settings = load_settings(environ={}, overrides={"auth": {"tokens": TOKENS}})
    registry = Registry()
    clock = [T0 + 60]
    p = pool(hub_database, 2)
    store = HubReviewStore(p, registry=registry, lease_seconds=60.0, clock=lambda: clock[0])
    counting = CountingPool(p)
    fallback = Explanations(
        store=store, decisions=None, explain_now=None, cache_size=16, registry=registry
    )
    authenticator = authenticator_from_settings(settings.auth)
    app = FastAPI()
    app.include_router(
        create_lookup_router(
            authenticator,
            RouteLookup(authenticator, cast(ConnectionPool[Conn], counting), store, fallback),
        )
    )
    yield Lookup(hub_database, TestClient(app), counting, store, clock)
    p.close()


def _get(hub: Lookup, d: Decision) -> dict[str, Any]:
    hub.counting.statements.clear()
    body: dict[str, Any] = as_json(
        hub.client.get(f"/decisions/{d.call_id}/{d.row}", headers=bearer(ALICE))
    )
    return body


def _on_demand_message(d: Decision) -> bytes:
    """An explanation computed on demand by a hub: stored with the decision's own time."""
    event = orjson.loads(explanation_message(d))
    event.update(
        event_id=str(uuid.uuid4()),
        time=dt.datetime.fromtimestamp(d.time, dt.UTC).isoformat().replace("+00:00", "Z"),
        contributions=[[9.0, 9.0]],
        source="on_demand",
    )
    return orjson.dumps(event)


def test_decision_item_and_sampled_explanation_come_back_from_one_statement(hub: Lookup) -> None:
    d = decision(review="queued", at=T0, request_id="one-stmt")
    hub.write(
        ("decision", decision_message(d)),
        ("explanation", explanation_message(d)),
        ("review", request_message(d)),
    )
    body = _get(hub, d)
    assert len(hub.counting.statements) == 1
    assert body["decision"]["decision_id"] == d.decision_id
    assert body["decision"]["request_id"] == "one-stmt"
    assert body["decision"]["time"] == pytest.approx(T0)
    assert body["explanation_source"] == "sampled"
    assert body["explanation"]["contributions"] == [[0.2, -0.1]]
    assert body["review_item"]["status"] == "pending"
    assert body["review_item"]["reason"] == "low_confidence"
    # Row 0 by the call id alone, as on a sidecar; the same one statement.
    first = as_json(hub.client.get(f"/decisions/{d.call_id}", headers=bearer(ALICE)))
    assert first == body


def test_a_sampled_explanation_wins_over_an_on_demand_one(hub: Lookup) -> None:
    d = decision(at=T0)
    hub.write(("decision", decision_message(d)), ("explanation", _on_demand_message(d)))
    body = _get(hub, d)
    # Computed on demand earlier (by any hub): answered from the database, nothing computed.
    assert (body["explanation_source"], body["explanation"]["contributions"]) == (
        "on_demand",
        [[9.0, 9.0]],
    )
    assert body["review_item"] is None
    hub.write(("explanation", explanation_message(d)))
    body = _get(hub, d)
    assert (body["explanation_source"], body["explanation"]["contributions"]) == (
        "sampled",
        [[0.2, -0.1]],
    )
    assert len(hub.counting.statements) == 1


def test_the_review_items_own_explanation_comes_before_an_on_demand_one(hub: Lookup) -> None:
    d = decision(review="queued", at=T0)
    hub.write(
        ("decision", decision_message(d)),
        ("review", request_message(d)),
        ("explanation", _on_demand_message(d)),
    )
    hub.store.set_explanation(d.decision_id, {"contributions": [[1.0, 1.0]]})
    body = _get(hub, d)
    assert body["explanation_source"] == "review_item"
    assert body["explanation"] == {"contributions": [[1.0, 1.0]]}


def test_with_nothing_stored_the_lookup_says_why_there_is_no_explanation(hub: Lookup) -> None:
    d = decision(at=T0)
    hub.write(("decision", decision_message(d)))
    body = _get(hub, d)
    assert body["explanation"] is None and body["explanation_source"] is None
    assert "no model artifact" in body["explanation_error"]
    assert len(hub.counting.statements) == 1


def test_a_lapsed_lease_shows_the_item_back_in_the_queue(hub: Lookup) -> None:
    d = decision(review="queued", at=T0)
    hub.write(("decision", decision_message(d)), ("review", request_message(d)))
    hub.store.claim(d.decision_id, "alice")
    assert _get(hub, d)["review_item"]["claimed_by"] == "alice"
    hub.clock[0] += 61
    try:
        item = _get(hub, d)["review_item"]
        assert (item["status"], item["claimed_by"]) == ("pending", None)
    finally:
        hub.clock[0] -= 61


def test_unknown_ids_answer_404_and_bad_rows_422(hub: Lookup) -> None:
    unknown = decision(at=T0)
    got = hub.client.get(f"/decisions/{unknown.call_id}/0", headers=bearer(ALICE))
    assert got.status_code == 404
    assert hub.client.get(f"/decisions/{unknown.call_id}/0").status_code == 401
    assert (
        hub.client.get(f"/decisions/{unknown.call_id}/1000001", headers=bearer(ALICE)).status_code
        == 422
    )
    got = hub.client.get(f"/decisions/{unknown.call_id}/0?x=1", headers=bearer(ALICE))
    assert got.status_code == 422


def test_an_id_that_carries_no_time_is_looked_up_in_every_partition(hub: Lookup) -> None:
    d = decision(call_id="legacy-call-id", at=T0 - 20 * 86_400)
    hub.write(("decision", decision_message(d)))
    found = find(hub.counting.inner, d.decision_id)
    assert found is not None and found.decision["call_id"] == "legacy-call-id"


def test_the_statement_reads_only_the_partitions_around_the_ids_time(hub: Lookup) -> None:
    # Decisions and explanations on ten days; the lookup of an id minted at T0.
    hub.write(
        *(
            (kind, msg(decision(at=T0 - k * 86_400)))
            for k in range(-3, 7)
            for kind, msg in (("decision", decision_message), ("explanation", explanation_message))
        )
    )
    args = {"id": "x/0", "lo": T0 - ID_WINDOW_S, "hi": T0 + ID_WINDOW_S}
    with connect(hub.url) as conn:
        plan = "\n".join(
            str(r[0]) for r in conn.execute(f"EXPLAIN {ONE_STATEMENT}".encode(), args).fetchall()
        )
    assert set(re.findall(r"decisions_p\d{8}", plan)) == {
        f"decisions_p202611{day:02d}" for day in (9, 10, 11)
    }
    # An explanation is made after its decision: from the window's start on, not before.
    explained = set(re.findall(r"explanations_p(\d{8})", plan))
    assert {f"202611{day:02d}" for day in range(9, 14)} <= explained
    assert min(explained) == "20261109"


def test_paths_under_a_decision_that_are_not_rows_go_on_to_their_own_routes(hub: Lookup) -> None:
    settings = load_settings(environ={}, overrides={"auth": {"tokens": TOKENS}})
    registry = Registry()
    fallback = Explanations(
        store=hub.store, decisions=None, explain_now=None, cache_size=1, registry=registry
    )
    other = APIRouter()

    @other.get("/decisions/{decision}/{row}/reasons")
    @other.get("/decisions/{decision}/reasons")
    def reasons() -> dict[str, str]:
        return {"route": "reasons"}

    authenticator = authenticator_from_settings(settings.auth)
    app = FastAPI()
    app.include_router(
        create_lookup_router(
            authenticator,
            RouteLookup(authenticator, hub.counting.inner, hub.store, fallback),
        )
    )
    app.include_router(other)
    client = TestClient(app)
    assert client.get("/decisions/abc/reasons").json() == {"route": "reasons"}
    assert client.get("/decisions/abc/0/reasons").json() == {"route": "reasons"}
