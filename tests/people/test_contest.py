"""Contests: front of the queue, review event, audit chain, idempotent, re-scored through the
proxy as a linked decision, claimed and decided by a reviewer, time to resolution measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.people.people_helpers import (
    ADMIN,
    AUDITOR,
    CASE,
    CASE2,
    FEATURES,
    REVIEWER,
    Made,
    demo_rows,
    send_rows,
)
from tests.servers import jsonl_events, wait_until


def _events(made: Made, topic: str) -> list[dict[str, Any]]:
    return jsonl_events(Path(made.service.settings.sink.directory) / topic)


def _metric(made: Made, name: str) -> float:
    text = made.get("/metrics", ADMIN)[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_contest_moves_through_claim_decide_and_audit(made: Made) -> None:
    contests = _metric(made, "sidecar_contests_total")
    resolved = _metric(made, "sidecar_contest_resolution_seconds_count")
    # A routed item already in the queue, so "front" means something.
    call_id, _ = send_rows(made.service, demo_rows(2, seed=5))
    assert made.service.pipeline.drain(5)
    made.service.review_store.enqueue(made.service.store.get(f"{call_id}/0"))  # type: ignore[arg-type]
    i = made.denied[1]
    did = made.id(i)
    debt = FEATURES.index("debt_to_income")
    statement = "My debt was paid off in March; the bureau had not updated it."
    status, filed, _ = made.post(
        f"/decisions/{did}/contest",
        CASE,
        {"statement": statement, "corrected_values": {"debt_to_income": 0.05}},
    )
    assert status == 201, filed
    assert filed["statement"] == statement and filed["filed_by"] == "cara"
    assert filed["status"] == "pending" and filed["time_to_resolution_s"] is None
    assert [r["feature"] for r in filed["reasons"]["reasons"]]
    # The corrected values went through the proxy as a decision of their own, linked by its
    # request id.
    rescore = filed["rescore"]
    assert rescore["error"] is None and rescore["status"] == 200
    assert rescore["request_id"] == f"contest:{did}"
    assert rescore["features"][debt] == 0.05
    assert rescore["prediction"] in ("repaid", "default")
    assert made.service.pipeline.drain(5)
    status, linked, _ = made.get(f"/decisions?request_id=contest:{did}", REVIEWER)
    assert status == 200
    assert [d["decision_id"] for d in linked["decisions"]] == [rescore["decision_id"]]

    # Idempotent: the second contest is the first.
    status, again, _ = made.post(f"/decisions/{did}/contest", CASE, {"statement": "again"})
    assert status == 200 and again["filed_at"] == filed["filed_at"]
    assert again["statement"] == statement

    # At the front of the queue, with the statement and corrected values for the reviewer.
    status, page, _ = made.get("/review/items?status=pending", REVIEWER)
    assert page["items"][0]["item_id"] == did and page["items"][0]["reason"] == "contested"
    status, item, _ = made.get(f"/review/items/{did}", REVIEWER)
    assert item["contest"]["statement"] == statement
    assert item["contest"]["corrected_values"] == {"debt_to_income": 0.05}

    # Object-level: another case handler does not read it; reviewers and auditors do.
    assert made.get(f"/decisions/{did}/contest", CASE2)[0] == 403
    assert made.get(f"/decisions/{did}/contest", AUDITOR)[0] == 200
    assert made.post(f"/decisions/{did}/contest", REVIEWER, {"statement": "x"})[0] == 403

    assert made.post(f"/review/items/{did}/claim", REVIEWER, b"")[0] == 200
    status, decided, _ = made.post(
        f"/review/items/{did}/decision",
        REVIEWER,
        {"action": "override", "outcome": "repaid", "reason": "bureau record corrected"},
    )
    assert status == 200, decided
    status, state, _ = made.get(f"/decisions/{did}/contest", CASE)
    assert state["status"] == "decided" and state["outcome"] == "repaid"
    assert state["decided_by"] == "rita" and state["time_to_resolution_s"] >= 0

    status, history, _ = made.get(f"/review/items/{did}/history", REVIEWER)
    actions = [r["action"] for r in history["records"]]
    assert actions == ["contested", "claimed", "overridden"]
    assert history["records"][0]["data"]["statement"] == statement
    assert made.get("/review/audit/verify", AUDITOR)[1]["ok"] is True

    wait_until(
        lambda: any(
            e["decision_id"] == did and e["reason"] == "contested"
            for e in _events(made, "sidecar.reviews")
        ),
        what="the contest's review event",
    )
    assert _metric(made, "sidecar_contests_total") == contests + 1
    assert _metric(made, "sidecar_contest_resolution_seconds_count") == resolved + 1


def test_a_decided_item_contested_is_reopened(made: Made) -> None:
    i = made.denied[2]
    did = made.id(i)
    made.service.review_store.enqueue(made.service.store.get(did))  # type: ignore[arg-type]
    assert made.post(f"/review/items/{did}/claim", REVIEWER, b"")[0] == 200
    body = {"action": "approve", "reason": "model is right"}
    assert made.post(f"/review/items/{did}/decision", REVIEWER, body)[0] == 200
    status, filed, _ = made.post(f"/decisions/{did}/contest", ADMIN, {"statement": "please look"})
    assert status == 201 and filed["status"] == "pending" and filed["rescore"] is None
    status, history, _ = made.get(f"/review/items/{did}/history", REVIEWER)
    assert [r["action"] for r in history["records"]][-2:] == ["approved", "contested"]
    assert history["records"][-1]["data"]["previous_status"] == "decided"


def test_contest_bodies_past_their_limits(made: Made) -> None:
    did = made.id(made.denied[3])
    limit = made.service.settings.contest.max_statement_chars
    path = f"/decisions/{did}/contest"
    assert made.post(path, CASE, {"statement": "x" * (limit + 1)})[0] == 422
    assert made.post(path, CASE, {"statement": "   "})[0] == 422
    assert made.post(path, CASE, {"statement": "x", "corrected_values": {"nope": 1}})[0] == 422
    assert made.post(path, CASE, {"statement": "x", "other": 1})[0] == 422
    big = made.service.settings.review.max_body_bytes + 1
    assert made.post(path, CASE, b'{"statement": "' + b"x" * big + b'"}')[0] == 413
    assert made.get(f"/decisions/{did}/contest", CASE)[0] == 404  # none of these filed one
