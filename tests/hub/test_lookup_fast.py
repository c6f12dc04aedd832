"""The lookup answered in front of FastAPI: the route's answer byte for byte, errors left to the route.

Against a real PostgreSQL; events written by the ingest writer, as the consumer would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.config import load_settings
from sidecar.control.auth import Principal, authenticator_from_settings
from sidecar.control.lookup import Explanations
from sidecar.hub import schema
from sidecar.hub.db import connect, pool
from sidecar.hub.lookup_fast import FastLookup, decision_key
from sidecar.hub.lookup_route import LOOKUP_ROLES, create_lookup_router, lookup_function
from sidecar.hub.review import HubReviewStore
from sidecar.hub.rows import Rows, add
from sidecar.hub.writer import Writer
from sidecar.metrics import Registry
from sidecar.review.schemas import LookupOut
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
class Apps:
    fast: TestClient  # the middleware in front of the route
    plain: TestClient  # the route alone
    fast_calls: list[str]
    call_id: str  # of the decision stored


@pytest.fixture(scope="module")
def apps(hub_database: str) -> Iterator[Apps]:
    with connect(hub_database) as conn:
        schema.migrate(conn)
    tokens = {**TOKENS, WRITER: {"name": "w", "role": "outcome_writer"}}
    settings = load_settings(
        environ={},
        overrides={"auth": {"tokens": tokens, "group_attribute_roles": ["auditor"]}},
    )
    registry = Registry()
    p = pool(hub_database, 2)
    store = HubReviewStore(p, registry=registry, lease_seconds=60.0, clock=lambda: T0 + 60)
    explanations = Explanations(
        store=store, decisions=None, explain_now=None, cache_size=16, registry=registry
    )
    authenticator = authenticator_from_settings(settings.auth)
    lookup = lookup_function(authenticator, p, store, explanations)
    calls: list[str] = []

    def counted(key: str, who: Principal) -> LookupOut:
        calls.append(key)
        return lookup(key, who)

    plain = FastAPI()
    plain.include_router(create_lookup_router(authenticator, lookup))
    fast = FastAPI()
    fast.include_router(create_lookup_router(authenticator, lookup))
    fast.add_middleware(FastLookup, lookup=counted, require=authenticator.require(*LOOKUP_ROLES))
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
    yield Apps(TestClient(fast), TestClient(plain), calls, d.call_id)
    p.close()


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content, a.headers.multi_items()) == (
        b.status_code,
        b.content,
        b.headers.multi_items(),
    )


def _both(apps: Apps, path: str, headers: dict[str, str]) -> tuple[httpx.Response, int]:
    apps.fast_calls.clear()
    fast = apps.fast.get(path, headers=headers)
    _same(fast, apps.plain.get(path, headers=headers))
    return fast, len(apps.fast_calls)


def test_a_found_decision_is_answered_in_front_byte_for_byte_as_the_route(apps: Apps) -> None:
    call_id = apps.call_id
    for path in (f"/decisions/{call_id}", f"/decisions/{call_id}/0"):
        for token in (ALICE, AUDITOR):  # the auditor sees group attributes, the reviewer not
            resp, calls = _both(apps, path, bearer(token))
            assert resp.status_code == 200
            assert calls == 1, "the middleware did not answer it"
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
    ],
)
def test_every_other_answer_is_the_routes_own(
    apps: Apps, path: str, token: str | None, status: int
) -> None:
    path = path.format(id=apps.call_id)
    resp, _ = _both(apps, path, bearer(token) if token else {})
    assert resp.status_code == status


def test_a_basic_scheme_is_not_taken_for_a_bearer_token(apps: Apps) -> None:
    path = f"/decisions/{apps.call_id}"
    resp, calls = _both(apps, path, {"authorization": f"Basic {ALICE}"})
    assert (resp.status_code, calls) == (401, 0)


def test_decision_keys_follow_the_routes_constraints() -> None:
    assert decision_key("/decisions/abc") == "abc/0"
    assert decision_key("/decisions/a.b:c-d_e/12") == "a.b:c-d_e/12"
    assert decision_key("/decisions/abc/1000000") == "abc/1000000"
    assert decision_key("/decisions/abc/1000001") is None
    assert decision_key("/decisions/abc/reasons") is None
    assert decision_key("/decisions/" + "a" * 129) is None
    assert decision_key("/decisions/a b") is None
    assert decision_key("/decisions") is None
