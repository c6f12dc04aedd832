"""The review API over real HTTP: roles, object-level rules, bounds, lookups, hold outcomes."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.review.review_helpers import (
    ADMIN,
    ALICE,
    AUDITOR,
    BOB,
    DemoExplainer,
    ReviewEnv,
    Served,
    bearer,
    control_app,
    make_decision,
    serve,
)


def snapshot(env: ReviewEnv) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    items = [
        (i.item_id, i.status, i.claimed_by, i.action, i.outcome)
        for i in env.store.list_items(limit=1000)
    ]
    return (env.store.audit_head(), items, len(env.events()))


# (method, path, body, the roles that may, expected status for them)
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, set[str], int]] = [
    ("GET", "/review/me", None, {"reviewer", "auditor", "admin"}, 200),
    ("GET", "/review/items", None, {"reviewer", "auditor", "admin"}, 200),
    ("GET", "/review/items/q1/0", None, {"reviewer", "auditor", "admin"}, 200),
    ("GET", "/review/items/q1/0/history", None, {"reviewer", "auditor", "admin"}, 200),
    ("GET", "/decisions/q1/0", None, {"reviewer", "auditor", "admin"}, 200),
    ("GET", "/review/audit/head", None, {"reviewer", "auditor", "admin"}, 200),
    ("GET", "/review/audit", None, {"auditor", "admin"}, 200),
    ("GET", "/review/audit/verify", None, {"auditor", "admin"}, 200),
    ("POST", "/review/items/q1/0/claim", None, {"reviewer", "admin"}, 200),
    ("POST", "/review/items/q2/0/release", None, {"reviewer", "admin"}, 409),
    (
        "POST",
        "/review/items/q2/0/decision",
        {"action": "approve", "reason": "ok"},
        {"reviewer", "admin"},
        409,
    ),
]
ROLE_TOKENS = {"reviewer": ALICE, "auditor": AUDITOR, "admin": ADMIN}


@pytest.mark.parametrize("role", ["reviewer", "auditor", "admin", "anonymous", "bad-token"])
def test_every_endpoint_admits_exactly_its_roles(env: ReviewEnv, served: Served, role: str) -> None:
    headers = {}
    if role in ROLE_TOKENS:
        headers = bearer(ROLE_TOKENS[role])
    elif role == "bad-token":
        headers = bearer("not-a-real-token-at-all")
    for n, (method, path, body, allowed, status) in enumerate(ENDPOINTS):
        # Fresh items per call, so one call's effect cannot mask the next one's.
        q1, q2 = f"e{n}a", f"e{n}b"
        env.store.enqueue(make_decision(q1))
        env.store.enqueue(make_decision(q2))
        env.decisions.add([make_decision(q1)])
        path = path.replace("q1", q1).replace("q2", q2)
        before = snapshot(env)
        r = httpx.request(method, served.url + path, json=body, headers=headers)
        if role in allowed:
            assert r.status_code == status, (path, r.text)
            continue
        expected = 403 if role in ROLE_TOKENS else 401
        assert r.status_code == expected, (path, r.text)
        assert isinstance(r.json()["detail"], str)
        if expected == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert snapshot(env) == before, path


def test_a_reviewer_decides_only_what_they_claimed(env: ReviewEnv, served: Served) -> None:
    env.store.enqueue(make_decision("own"))
    alice, bob, admin = served.client(ALICE), served.client(BOB), served.client(ADMIN)
    assert alice.post("/review/items/own/0/claim").status_code == 200
    before = snapshot(env)
    r = bob.post(
        "/review/items/own/0/decision",
        json={"action": "override", "outcome": "repaid", "reason": "mine"},
    )
    assert r.status_code == 403 and "decides only what they claimed" in r.json()["detail"]
    assert bob.post("/review/items/own/0/release").status_code == 403
    assert bob.post("/review/items/own/0/claim").status_code == 409
    assert snapshot(env) == before
    # An admin may take a claim back to the queue, not decide in someone's name.
    r = admin.post("/review/items/own/0/decision", json={"action": "approve", "reason": "x"})
    assert r.status_code == 403
    assert admin.post("/review/items/own/0/release").json()["status"] == "pending"
    history = [(r.action, r.actor) for r in env.store.history("own/0")]
    assert history[-1] == ("released", "adam")


def test_group_attributes_only_for_allowed_roles(env: ReviewEnv, served: Served) -> None:
    d = make_decision("grp", groups={"gender": "F", "age_band": "18-24"})
    env.decisions.add([d])
    env.store.enqueue(d)
    for token, sees in ((ALICE, False), (AUDITOR, True), (ADMIN, True)):
        c = served.client(token)
        assert c.get("/review/me").json()["sees_group_attributes"] is sees
        item = c.get("/review/items/grp/0").json()
        looked = c.get("/decisions/grp").json()
        for body in (item["decision"], looked["decision"]):
            if sees:
                assert body["group_attributes"] == {"gender": "F", "age_band": "18-24"}
            else:
                assert body["group_attributes"] is None
                assert "18-24" not in c.get("/review/items/grp/0").text


def test_two_reviewers_claim_over_http_and_one_wins(env: ReviewEnv, served: Served) -> None:
    ids = [f"h{i}" for i in range(15)]
    for rid in ids:
        env.store.enqueue(make_decision(rid))
    clients = {"alice": served.client(ALICE), "bob": served.client(BOB)}
    for rid in ids:
        start = threading.Barrier(2)
        codes: dict[str, int] = {}

        def go(
            name: str,
            rid: str = rid,
            start: threading.Barrier = start,
            codes: dict[str, int] = codes,
        ) -> None:
            start.wait()
            codes[name] = clients[name].post(f"/review/items/{rid}/0/claim").status_code

        threads = [threading.Thread(target=go, args=(n,)) for n in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes.values()) == [200, 409], (rid, codes)
        winner = next(n for n, c in codes.items() if c == 200)
        assert env.store.get(rid) is not None
        assert env.store.get(rid).claimed_by == winner  # type: ignore[union-attr]


def test_bounds_and_validation_errors_are_clear_json(env: ReviewEnv, served: Served) -> None:
    env.store.enqueue(make_decision("v1"))
    alice = served.client(ALICE)
    alice.post("/review/items/v1/0/claim")
    before = snapshot(env)
    url = "/review/items/v1/0/decision"

    r = alice.get("/review/items", params={"limit": 101})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    assert alice.get("/review/items", params={"status": "lost"}).status_code == 422
    assert alice.get("/review/items/bad id!/0").status_code == 422
    assert alice.get("/review/items/v1/-1").status_code == 422

    big = {"action": "approve", "reason": "x" * (64 * 1024)}
    r = alice.post(url, json=big)
    assert r.status_code == 413 and "review.max_body_bytes" in r.json()["detail"]

    def chunks() -> Any:
        for _ in range(100):
            yield b" " * 1024

    r = alice.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413  # no Content-Length: counted while reading

    r = alice.post(url, content=b"approve", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = alice.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = alice.post(url, json={"action": "override", "reason": "no outcome"})
    assert r.status_code == 422 and "needs an outcome" in r.json()["detail"][0]["msg"]
    r = alice.post(url, json={"action": "approve", "reason": "   "})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["reason"]
    r = alice.post(url, json={"action": "approve", "reason": "ok", "extra": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["extra"]
    r = alice.post(url, json={"action": "delete", "reason": "ok"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["action"]
    r = alice.post(url, json={"action": "approve", "reason": "y" * 2001})
    assert r.status_code == 422 and "review.max_reason_chars" in r.json()["detail"]
    assert snapshot(env) == before


def test_pages_follow_the_cursor(env: ReviewEnv, served: Served) -> None:
    for i in range(7):
        env.store.enqueue(make_decision(f"pg{i}", reason="band" if i % 2 else "low_confidence"))
    alice = served.client(ALICE)
    seen: list[str] = []
    after = 0
    while True:
        page = alice.get("/review/items", params={"limit": 3, "after": after}).json()
        seen += [i["item_id"] for i in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == [f"pg{i}/0" for i in range(7)]
    assert page["counts"] == {"pending": 7}
    band = alice.get("/review/items", params={"reason": "band"}).json()["items"]
    assert [i["item_id"] for i in band] == ["pg1/0", "pg3/0", "pg5/0"]
    alice.post("/review/items/pg2/0/claim")
    mine = alice.get("/review/items", params={"mine": "true", "status": "claimed"}).json()
    assert [i["item_id"] for i in mine["items"]] == ["pg2/0"]
    audit = served.client(AUDITOR).get("/review/audit", params={"limit": 5}).json()
    assert [r["seq"] for r in audit["records"]] == [1, 2, 3, 4, 5] and audit["next_after"] == 5


def test_lookup_of_a_sampled_decision_uses_its_explanation(
    env: ReviewEnv, served: Served, demo_explainer: DemoExplainer
) -> None:
    d = make_decision("s1", review=None, reason=None)
    env.decisions.add([d])
    sampled = demo_explainer(d)
    env.decisions.set_explanation(d, sampled)
    calls = demo_explainer.calls
    r = served.client(AUDITOR).get("/decisions/s1")
    assert r.status_code == 200
    body = r.json()
    assert body["explanation_source"] == "sampled" and body["explanation"] == sampled
    assert body["review_item"] is None and body["decision"]["decision_id"] == "s1/0"
    assert demo_explainer.calls == calls


def test_lookup_of_an_unsampled_decision_explains_it_once_and_caches(
    env: ReviewEnv, served: Served, demo_explainer: DemoExplainer
) -> None:
    d0 = make_decision("u1", 0, review=None, reason=None)
    d1 = make_decision(
        "u1", 1, review=None, reason=None, features=[60, 9e4, 0.1, 200, 0, 5e3, 20, 0.1, 3, 0]
    )
    env.decisions.add([d0, d1])
    calls = demo_explainer.calls
    alice = served.client(ALICE)
    first = alice.get("/decisions/u1/1").json()
    assert first["explanation_source"] == "on_demand" and first["decision"]["row"] == 1
    e = first["explanation"]
    assert e["explainer"].startswith("treeshap") and e["feature_names"][0] == "age"
    assert len(e["top"]) == 5 and {"feature", "value", "contribution"} <= set(e["top"][0])
    # Exact TreeSHAP: base value plus contributions is the model's margin.
    for k, base in enumerate(e["base_values"]):
        assert abs(base + sum(e["contributions"][k]) - e["margin"][k]) < 1e-6
    again = alice.get("/decisions/u1/1").json()
    assert again["explanation_source"] == "cached" and again["explanation"] == e
    assert demo_explainer.calls == calls + 1
    row0 = alice.get("/decisions/u1").json()
    assert row0["decision"]["row"] == 0 and row0["explanation"] != e


def test_lookup_unknown_ids_and_decisions_only_the_queue_remembers(
    env: ReviewEnv, served: Served
) -> None:
    alice = served.client(ALICE)
    r = alice.get("/decisions/never-made")
    assert r.status_code == 404 and "decisions.retention" in r.json()["detail"]
    assert alice.get("/decisions/never-made/3").status_code == 404
    assert alice.get("/review/items/never-made/0").status_code == 404
    # Forgotten by the bounded decision store, still in the review queue.
    env.store.enqueue(make_decision("only-queued"))
    body = alice.get("/decisions/only-queued").json()
    assert body["decision"]["decision_id"] == "only-queued/0"
    assert body["review_item"]["status"] == "pending"
    assert body["explanation_source"] == "on_demand"
    # The item now keeps the explanation it was given.
    assert alice.get("/decisions/only-queued").json()["explanation_source"] == "review_item"


def test_lookup_without_an_explainer_says_why(env: ReviewEnv) -> None:
    env.decisions.add([make_decision("nx", review=None, reason=None)])
    s = serve(control_app(env, None))
    try:
        body = s.client(ALICE).get("/decisions/nx").json()
    finally:
        s.server.should_exit = True
        s.thread.join(10)
    assert body["explanation"] is None and body["explanation_source"] is None
    assert "model.artifact" in body["explanation_error"]


def test_hold_outcomes_are_readable_from_the_control_plane(env: ReviewEnv, served: Served) -> None:
    answer = b'{"model_name":"credit","outputs":[{"name":"label","data":["default"]}]}'
    for rid in ("hold-a", "hold-o"):
        d = make_decision(rid, review="held")
        env.store.enqueue(
            d,
            held_response=answer,
            held_headers=[(b"content-type", b"application/json")],
            held_status=200,
        )
    alice = served.client(ALICE)
    ticket = alice.get("/review/items/hold-a/0").json()
    assert ticket["mode"] == "held" and ticket["final"] == {
        "state": "held",
        "outcome": None,
        "status_code": None,
        "response": None,
    }
    alice.post("/review/items/hold-a/0/claim")
    alice.post("/review/items/hold-a/0/decision", json={"action": "approve", "reason": "fine"})
    final = alice.get("/review/items/hold-a").json()["final"]
    assert final["state"] == "approved" and final["outcome"] == "default"
    assert final["status_code"] == 200 and final["response"]["outputs"][0]["data"] == ["default"]

    alice.post("/review/items/hold-o/0/claim")
    alice.post(
        "/review/items/hold-o/0/decision",
        json={"action": "override", "outcome": {"label": "repaid"}, "reason": "documents ok"},
    )
    final = alice.get("/review/items/hold-o/0").json()["final"]
    # An override replaces the model's answer: the held response is not handed out.
    assert final == {
        "state": "overridden",
        "outcome": {"label": "repaid"},
        "status_code": None,
        "response": None,
    }
    decided = [e for e in env.events() if e["action"] == "decided"]
    assert [(e["decision_id"], e["outcome"]) for e in decided] == [
        ("hold-a/0", "default"),
        ("hold-o/0", '{"label":"repaid"}'),
    ]


def test_the_audit_endpoints_verify_the_chain(env: ReviewEnv, served: Served) -> None:
    env.store.enqueue(make_decision("av"))
    auditor = served.client(AUDITOR)
    head = auditor.get("/review/audit/head").json()
    assert head["seq"] == 1 and len(head["hash"]) == 64
    result = auditor.get("/review/audit/verify", params={"head": head["hash"]}).json()
    assert result["ok"] and result["count"] == 1
    bogus = "ab" * 32
    result = auditor.get("/review/audit/verify", params={"head": bogus}).json()
    assert not result["ok"] and "truncated" in result["error"]
    assert auditor.get("/review/audit/verify", params={"head": "xyz"}).status_code == 422


def test_the_console_is_served_with_a_strict_policy(served: Served) -> None:
    r = httpx.get(served.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert '<script src="/console/console.js"' in r.text
    js = httpx.get(served.url + "/console/console.js")
    assert js.status_code == 200 and "sessionStorage" in js.text and "innerHTML" not in js.text
    assert httpx.get(served.url + "/console/console.css").status_code == 200
    assert httpx.get(served.url + "/console/../auth.py").status_code == 404
    # Static files need no token; every API behind them does.
    assert httpx.get(served.url + "/review/items").status_code == 401
