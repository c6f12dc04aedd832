"""POST /outcomes over real HTTP: roles, limits, unknown decisions, duplicates, idempotency."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from sidecar.decisions import new_call_id
from sidecar.service import Service
from tests.eventlib import validate_event
from tests.outcomes.helpers import (
    ADMIN,
    AUDITOR,
    MODEL,
    REVIEWER,
    TOKENS,
    WRITER,
    infer,
    read_events,
    v2_model,
)
from tests.servers import running_sidecar

OBSERVED = "2026-12-24T09:30:00+01:00"


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    with (
        v2_model() as up,
        running_sidecar(
            up.url,
            model=MODEL,
            auth={"tokens": TOKENS},
            outcomes={"max_batch_items": 5, "max_body_bytes": 2048},
        ) as service,
    ):
        yield service


def post(svc: Service, body: Any, token: str | None = WRITER, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, bytes):
        headers["content-type"] = "application/json"
        return httpx.post(f"{svc.control_url}/outcomes", content=body, headers=headers, **kw)
    return httpx.post(f"{svc.control_url}/outcomes", json=body, headers=headers, **kw)


def outcome_events(svc: Service) -> list[dict[str, Any]]:
    return read_events(svc.settings.sink.directory, svc.settings.kafka.topic_outcomes)


def one(decision_id: str, outcome: Any = "repaid", observed_at: Any = OBSERVED) -> dict[str, Any]:
    return {"decision_id": decision_id, "outcome": outcome, "observed_at": observed_at}


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), ("not-a-known-token-at-all", 401), (REVIEWER, 403), (AUDITOR, 403)],
)
def test_only_outcome_writers_and_admins_may_post(
    svc: Service, token: str | None, status: int
) -> None:
    before = len(outcome_events(svc))
    r = post(svc, {"outcomes": [one(f"{new_call_id()}/0")]}, token)
    assert r.status_code == status
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert len(outcome_events(svc)) == before


def test_a_known_decision_is_accepted_and_emitted_as_the_schema_says(svc: Service) -> None:
    call_id = infer(svc, rows=2)
    assert svc.pipeline.drain(5)
    for token in (WRITER, ADMIN):
        r = post(svc, {"outcomes": [one(f"{call_id}/1", "default")]}, token)
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["status"] == "accepted" and result["decision_known"] is True
    found = [e for e in outcome_events(svc) if e["decision_id"] == f"{call_id}/1"]
    assert len(found) == 2
    for e in found:
        validate_event(e)
        assert e["outcome"] == "default"
        assert e["observed_at"] == "2026-12-24T08:30:00.000000Z"  # to UTC
        assert e["source"] == "api" and e["decision_known"] is True
        assert e["time"] == e["received_at"]
    # Posting again is idempotent: the same event id, for consumers to de-duplicate on.
    assert found[0]["event_id"] == found[1]["event_id"] == result["event_id"]


def test_unknown_decisions_are_reported_and_still_emitted(svc: Service) -> None:
    fresh = f"{new_call_id()}/0"  # newer than anything the store keeps: never made here
    old = "00000000000070008000000000000000/0"  # older than the store keeps: cannot tell
    foreign = "some-other-system-id/3"
    r = post(svc, {"outcomes": [one(fresh), one(old), one(foreign)]})
    assert r.status_code == 200
    got = {x["decision_id"]: x for x in r.json()["results"]}
    assert [got[i]["status"] for i in (fresh, old, foreign)] == ["unknown_decision"] * 3
    assert [got[i]["decision_known"] for i in (fresh, old, foreign)] == [False, None, None]
    emitted = {e["decision_id"]: e for e in outcome_events(svc)}
    assert emitted[fresh]["decision_known"] is False
    assert emitted[old]["decision_known"] is None and emitted[foreign]["decision_known"] is None


def test_each_item_is_answered_duplicates_and_invalid_ones_are_not_emitted(svc: Service) -> None:
    a, b = f"{new_call_id()}/0", f"{new_call_id()}/0"
    items = [
        one(a),
        one(a),  # the same again: duplicate
        one(a, "default"),  # another outcome for the same decision in one batch
        one(b, "maybe"),  # not a class label
        {"decision_id": b, "outcome": "repaid"},  # no observed_at
    ]
    r = post(svc, {"outcomes": items})
    assert r.status_code == 200
    body = r.json()
    assert [x["status"] for x in body["results"]] == [
        "unknown_decision",
        "duplicate",
        "invalid",
        "invalid",
        "invalid",
    ]
    errors = [x["error"] for x in body["results"][2:]]
    assert "earlier in this batch" in errors[0]
    assert "not one of model.class_labels" in errors[1]
    assert "missing observed_at" in errors[2]
    assert body["counts"] == {
        "accepted": 0,
        "unknown_decision": 1,
        "duplicate": 1,
        "invalid": 3,
        "not_recorded": 0,
    }
    emitted = [e for e in outcome_events(svc) if e["decision_id"] in (a, b)]
    assert [e["decision_id"] for e in emitted] == [a]


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (one("no-row-part"), "decision_id must be '<call id>/<row>'"),
        (one("x" * 255 + "/1"), "at most 256 characters"),  # 257
        (one("a/0", True), "class label (string) or a number"),
        (one("a/0", observed_at="2026-12-24T09:30:00"), "RFC 3339"),
        (one("a/0", observed_at="2026-13-24T09:30:00Z"), "not a valid time"),
        (one("a/0", observed_at=1795392000), "RFC 3339 string"),
        ({**one("a/0"), "note": "x"}, "unknown field(s) note"),
        ("a/0", "must be an object"),
    ],
)
def test_invalid_items_say_why(svc: Service, item: Any, why: str) -> None:
    r = post(svc, {"outcomes": [item]})
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert result["status"] == "invalid" and why in result["error"]


def test_past_the_limits_the_whole_body_is_refused(svc: Service) -> None:
    before = len(outcome_events(svc))
    six = {"outcomes": [one(f"{new_call_id()}/{i}") for i in range(6)]}
    r = post(svc, six)
    assert r.status_code == 413 and "outcomes.max_batch_items" in r.text
    five = {"outcomes": [one(f"{new_call_id()}/{i}") for i in range(5)]}
    assert len(orjson.dumps(five)) < 2048
    assert post(svc, five).status_code == 200
    big = {"outcomes": [one("a/0", "x" * 2100)]}
    r = post(svc, big)
    assert r.status_code == 413 and "outcomes.max_body_bytes" in r.text
    # Streamed without a length: refused once the bytes pass the limit.
    chunks = iter([orjson.dumps(big)[:1500], orjson.dumps(big)[1500:]])
    r = httpx.post(
        f"{svc.control_url}/outcomes",
        content=chunks,
        headers={"authorization": f"Bearer {WRITER}", "content-type": "application/json"},
    )
    assert r.status_code == 413
    assert len(outcome_events(svc)) == before + 5


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 422),
        (b'{"outcome": []}', 422),
        (b'{"outcomes": {}}', 422),
        (b'{"outcomes": [], "extra": 1}', 422),
    ],
)
def test_a_malformed_body_is_422(svc: Service, body: bytes, status: int) -> None:
    assert post(svc, body).status_code == status


def test_a_body_that_is_not_json_is_415(svc: Service) -> None:
    r = httpx.post(
        f"{svc.control_url}/outcomes",
        content=b"decision_id,outcome",
        headers={"authorization": f"Bearer {WRITER}", "content-type": "text/csv"},
    )
    assert r.status_code == 415


def test_outcomes_are_counted_by_status(svc: Service) -> None:
    post(svc, {"outcomes": [one(f"{new_call_id()}/0"), one("bad")]})
    text = httpx.get(f"{svc.control_url}/metrics").text
    assert 'sidecar_outcomes_total{status="unknown_decision"}' in text
    assert 'sidecar_outcomes_total{status="invalid"}' in text
