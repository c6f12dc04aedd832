"""The lookup answered in front of FastAPI, on the event loop: the route's answer byte for byte
(a 404 included, from one statement), the other errors left to the route.

Against a real PostgreSQL; events written by the ingest writer, as the consumer would.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from sidecar.config import load_settings
from sidecar.control.auth import Authenticator, Principal, authenticator_from_settings
from sidecar.control.lookup import Explanations
from sidecar.hub import schema
from sidecar.hub.db import AsyncConn, Conn, async_pool, connect, pool
from sidecar.hub.lookup_fast import FastLookup, decision_key
from sidecar.hub.lookup_route import LOOKUP_ROLES, Found, Lookup, create_lookup_router
from sidecar.hub.review import HubReviewStore
from sidecar.hub.rows import Rows, add
from sidecar.hub.writer import Writer
from sidecar.metrics import Registry
from tests.hub.hubkit import (
    ALICE,
    AUDITOR,
    TOKENS,
    bearer,
    decision,
    decision_message,
    explanation_message,
    request_message,
)

T0 = dt.datetime(2026, 11, 10, 12, 0, tzinfo=dt.UTC).timestamp()
WRITER = "writer-token-0123456789"


@dataclass
class Statements:
    """Statements run: on the event loop (the middleware's), in threads (the route's, and an
    answer that blocks), and the threads the loop's ones ran on."""

    on_loop: int = 0
    in_threads: int = 0
    loop_threads: set[int] = field(default_factory=set)
    other_threads: set[int] = field(default_factory=set)

    def clear(self) -> None:
        self.on_loop = self.in_threads = 0


class CountingAsyncPool:
    """The middleware's pool, counting checkouts (one per statement)."""

    def __init__(self, inner: AsyncConnectionPool[AsyncConn], seen: Statements) -> None:
        self.inner, self._seen = inner, seen

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConn]:
        self._seen.on_loop += 1
        self._seen.loop_threads.add(threading.get_ident())
        async with self.inner.connection() as conn:
            yield conn

    async def open(self, wait: bool, timeout: float) -> None:
        await self.inner.open(wait=wait, timeout=timeout)

    async def close(self) -> None:
        await self.inner.close()


class CountingPool:
    def __init__(self, inner: ConnectionPool[Conn], seen: Statements) -> None:
        self.inner, self._seen = inner, seen

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        self._seen.in_threads += 1
        self._seen.other_threads.add(threading.get_ident())
        with self.inner.connection() as conn:
            yield conn


@dataclass
class Apps:
    fast: TestClient  # the middleware in front of the route
    plain: TestClient  # the route alone
    statements: Statements  # of the fast app
    call_id: str  # of the decision stored
    store: HubReviewStore
    clock: list[float]
    url: str


def _lookup(
    p: ConnectionPool[Conn], clock: list[float], *, explains: bool = False
) -> tuple[Lookup, HubReviewStore, Authenticator]:
    tokens = {**TOKENS, WRITER: {"name": "w", "role": "outcome_writer"}}
    settings = load_settings(
        environ={},
        overrides={"auth": {"tokens": tokens, "group_attribute_roles": ["auditor"]}},
    )
    registry = Registry()
    store = HubReviewStore(p, registry=registry, lease_seconds=60.0, clock=lambda: clock[0])
    explanations = Explanations(
        store=store, decisions=None, explain_now=None, cache_size=16, registry=registry
    )
    authenticator = authenticator_from_settings(settings.auth)
    return Lookup(authenticator, p, store, explanations, explains=explains), store, authenticator


@pytest.fixture(scope="module")
def apps(hub_database: str) -> Iterator[Apps]:
    with connect(hub_database) as conn:
        schema.migrate(conn)
    clock = [T0 + 60]
    seen = Statements()
    p = pool(hub_database, 2)
    plain_lookup, store, authenticator = _lookup(p, clock)
    fast_lookup, _, _ = _lookup(cast(ConnectionPool[Conn], CountingPool(p, seen)), clock)
    plain = FastAPI()
    plain.include_router(create_lookup_router(authenticator, plain_lookup))
    fast = FastAPI()
    fast.include_router(create_lookup_router(authenticator, fast_lookup))
    fast.add_middleware(
        FastLookup,
        lookup=fast_lookup,
        pool=cast(
            AsyncConnectionPool[AsyncConn], CountingAsyncPool(async_pool(hub_database, 2), seen)
        ),
        require=authenticator.check(*LOOKUP_ROLES),
    )
    with connect(hub_database) as conn:
        rows = Rows()
        d = decision(review="queued", at=T0, request_id="fast-1")
        for kind, value in (
            ("decision", decision_message(d)),
            ("explanation", explanation_message(d)),
            ("review", request_message(d)),
        ):
            add(rows, kind, value)
        Writer(conn, clock=lambda: T0).write(rows)
    # Entered: one event loop for every request, and the lifespan that opens the pool.
    with TestClient(fast) as fast_client:
        yield Apps(fast_client, TestClient(plain), seen, d.call_id, store, clock, hub_database)
    p.close()


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content, a.headers.multi_items()) == (
        b.status_code,
        b.content,
        b.headers.multi_items(),
    )


def _both(apps: Apps, path: str, headers: dict[str, str]) -> tuple[httpx.Response, Statements]:
    """The fast app's answer, checked the same as the route's; the statements it ran."""
    apps.statements.clear()
    fast = apps.fast.get(path, headers=headers)
    ran = Statements(apps.statements.on_loop, apps.statements.in_threads)
    _same(fast, apps.plain.get(path, headers=headers))
    return fast, ran


def test_a_found_decision_is_answered_in_front_byte_for_byte_as_the_route(apps: Apps) -> None:
    call_id = apps.call_id
    for path in (f"/decisions/{call_id}", f"/decisions/{call_id}/0"):
        for token in (ALICE, AUDITOR):  # the auditor sees group attributes, the reviewer not
            resp, ran = _both(apps, path, bearer(token))
            assert resp.status_code == 200
            assert (ran.on_loop, ran.in_threads) == (1, 0), "the middleware did not answer it"
            body = resp.json()
            assert body["explanation_source"] == "sampled"
            assert body["review_item"]["status"] == "pending"


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        ("/decisions/{id}", None, 401),
        ("/decisions/{id}", "not-a-token-0123456789", 401),
        ("/decisions/{id}", WRITER, 403),
        ("/decisions/{id}?x=1", ALICE, 422),
        ("/decisions/no%20such", ALICE, 422),
        ("/decisions/{id}/1000001", ALICE, 422),
        ("/decisions/unknown-id", ALICE, 404),
        ("/decisions/{id}/3", ALICE, 404),
        ("/decisions/0190f0c8-0000-7000-8000-000000000000", ALICE, 404),
    ],
)
def test_every_other_answer_is_the_routes_own(
    apps: Apps, path: str, token: str | None, status: int
) -> None:
    path = path.format(id=apps.call_id)
    resp, ran = _both(apps, path, bearer(token) if token else {})
    assert resp.status_code == status
    # A decision not found: one statement, on the loop (the route no longer runs it again);
    # the other errors are refused before any.
    assert (ran.on_loop, ran.in_threads) == ((1, 0) if status == 404 else (0, 0))


def test_an_answer_that_blocks_is_completed_in_a_thread_and_is_the_routes(apps: Apps) -> None:
    d = decision(review="queued", at=T0, request_id="fast-lapsed")
    rows = Rows()
    add(rows, "decision", decision_message(d))
    add(rows, "review", request_message(d))
    with connect(apps.url) as conn:
        Writer(conn, clock=lambda: T0).write(rows)
    apps.store.claim(d.decision_id, "alice")
    apps.clock[0] += 61  # past the lease: the answer reads the item again, from the store
    try:
        apps.statements.other_threads.clear()
        resp, ran = _both(apps, f"/decisions/{d.call_id}", bearer(ALICE))
    finally:
        apps.clock[0] -= 61
    assert resp.status_code == 200
    item = resp.json()["review_item"]
    assert (item["status"], item["claimed_by"]) == ("pending", None)
    # The statement on the loop; the store's expiry and read again in a worker thread.
    assert ran.on_loop == 1 and ran.in_threads >= 1
    assert apps.statements.other_threads.isdisjoint(apps.statements.loop_threads)


def test_only_a_lapsed_lease_or_an_explanation_to_compute_blocks(apps: Apps) -> None:
    stored = apps.store.get(apps.call_id)
    assert stored is not None and stored.explanation is None
    decision_ = stored.decision
    sampled = {"contributions": [[1.0]]}
    lapsed = replace(stored, status="claimed", claimed_by="a", lease_expires=apps.clock[0])
    held = replace(lapsed, lease_expires=apps.clock[0] + 1)
    with_own = replace(stored, explanation=sampled)
    for explains in (False, True):
        lookup, _, _ = _lookup(cast(ConnectionPool[Conn], None), apps.clock, explains=explains)
        assert not lookup.blocks(None)
        assert not lookup.blocks(Found(decision_, None, sampled, "sampled"))
        assert not lookup.blocks(Found(decision_, held, sampled, "sampled"))
        assert lookup.blocks(Found(decision_, lapsed, sampled, "sampled"))
        assert not lookup.blocks(Found(decision_, with_own, None, None))
        # Nothing stored to show: computed now, where an explainer is configured.
        assert lookup.blocks(Found(decision_, None, None, None)) is explains
        assert lookup.blocks(Found(decision_, stored, None, None)) is explains


def test_a_lease_that_lapses_after_blocks_said_no_is_not_read_again_on_the_loop(
    apps: Apps,
) -> None:
    stored = apps.store.get(apps.call_id)
    assert stored is not None
    sampled = {"contributions": [[1.0]]}
    held = replace(stored, status="claimed", claimed_by="a", lease_expires=apps.clock[0] + 1)
    # No pool: a read of the store here would fail.
    lookup, _, _ = _lookup(cast(ConnectionPool[Conn], None), apps.clock)
    found = Found(stored.decision, held, sampled, "sampled")
    assert not lookup.blocks(found)
    who = Principal(name="alice", role="reviewer")
    apps.clock[0] += 2  # the lease lapses between the two calls
    try:
        out = lookup.answer(apps.call_id, found, who, reread=False)
        with pytest.raises(AttributeError):
            lookup.answer(apps.call_id, found, who)  # the route's own answer reads it again
    finally:
        apps.clock[0] -= 2
    assert out.review_item is not None and out.review_item.status == "claimed"


def test_a_basic_scheme_is_not_taken_for_a_bearer_token(apps: Apps) -> None:
    path = f"/decisions/{apps.call_id}"
    resp, ran = _both(apps, path, {"authorization": f"Basic {ALICE}"})
    assert (resp.status_code, ran.on_loop, ran.in_threads) == (401, 0, 0)


def test_decision_keys_follow_the_routes_constraints() -> None:
    assert decision_key("/decisions/abc") == "abc/0"
    assert decision_key("/decisions/a.b:c-d_e/12") == "a.b:c-d_e/12"
    assert decision_key("/decisions/abc/1000000") == "abc/1000000"
    assert decision_key("/decisions/abc/1000001") is None
    assert decision_key("/decisions/abc/reasons") is None
    assert decision_key("/decisions/" + "a" * 129) is None
    assert decision_key("/decisions/a b") is None
    assert decision_key("/decisions") is None
