"""A sidecar in fleet mode takes no contests (the hub does): refused with 409 naming the setting,
and the hub when review.hub_url is set, never half-filed."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sidecar.config import load_settings
from sidecar.control.app import create_control_app
from sidecar.control.auth import authenticator_from_settings
from sidecar.control.lookup import Explanations
from sidecar.metrics import Registry
from sidecar.people.context import build_context
from sidecar.people.router import create_people_router
from sidecar.review.forward import HubForwardingStore
from sidecar.review.model import Conflict
from sidecar.sinks.null import NullSink


def test_the_fleet_forwarding_store_refuses_contests_naming_the_setting() -> None:
    registry = Registry()
    store = HubForwardingStore(sink=NullSink(registry), registry=registry)
    assert store.takes_contests is False
    assert store.get_contest("0190f1c2-0000-7000-8000-000000000000/0") is None
    with pytest.raises(Conflict, match=r"review\.store = hub"):
        store.contest(
            {"decision_id": "0190f1c2-0000-7000-8000-000000000000/0"},
            actor="case",
            statement="I was not late",
            corrected=None,
            rescore=None,
            reasons=None,
        )


def _refusal(review: dict[str, str]) -> tuple[int, str]:
    token = "case-handler-token-0001"
    s = load_settings(
        environ={},
        overrides={
            "review": {"store": "hub", **review},
            "auth": {"tokens": {token: {"name": "cara", "role": "case_handler"}}},
        },
    )
    registry = Registry()
    store = HubForwardingStore(sink=NullSink(registry), registry=registry)
    explanations = Explanations(
        store=store, decisions=None, explain_now=None, cache_size=1, registry=registry
    )
    router = create_people_router(
        settings=s,
        context=build_context(s, None),
        authenticator=authenticator_from_settings(s.auth),
        explanations=explanations,
        store=store,
        registry=registry,
        proxy_url="http://127.0.0.1:9",
    )
    app = create_control_app(registry=registry, ready_checks=[], routers=[router])
    did = "0190f1c2-0000-7000-8000-000000000000/0"
    r = TestClient(app).post(
        f"/decisions/{did}/contest",
        json={"statement": "I was not late"},
        headers={"Authorization": f"Bearer {token}"},
    )
    return r.status_code, str(r.json()["detail"])


def test_a_contest_filed_on_a_fleet_sidecar_is_told_where_the_hub_takes_it() -> None:
    # Refused before the decision is even looked for: nothing is scored, nothing filed.
    code, detail = _refusal({})
    assert code == 409 and "review.store = hub" in detail and "review.hub_url" in detail
    code, detail = _refusal({"hub_url": "https://hub.example.test/"})
    assert code == 409
    assert (
        "POST https://hub.example.test/decisions/0190f1c2-0000-7000-8000-000000000000/0/contest"
        in detail
    )
