"""The review store: transitions, conflicts, leases, races, and the events each step emits."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jsonschema
import pytest

from sidecar.metrics import Registry
from sidecar.review.model import ItemSummary, decision_to_dict
from sidecar.review.store import Conflict, Forbidden, NotFound, SqliteReviewStore
from sidecar.sinks.null import NullSink
from tests.review.review_helpers import ReviewEnv, build_env, make_decision

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "sidecar/schemas/review.v1.json").read_text()
)


class Clock:
    """Time the test moves by hand, so lease expiry is exact rather than slept for."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_enqueue_claim_decide_emits_an_event_and_an_audit_record_per_step(env: ReviewEnv) -> None:
    store = env.store
    item = store.enqueue(make_decision("r1"), explanation={"top": []})
    assert item is not None and item.item_id == "r1/0" and item.status == "pending"
    assert item.reason == "low_confidence" and item.explanation == {"top": []}

    claimed = store.claim("r1/0", "alice")
    assert claimed.status == "claimed" and claimed.claimed_by == "alice"
    assert claimed.lease_expires is not None
    decided = store.decide("r1/0", "alice", "override", "repaid", "income verified by phone")
    assert decided.status == "decided" and decided.outcome == "repaid"
    assert decided.decided_by == "alice" and decided.decided_reason == "income verified by phone"

    actions = [r.action for r in store.history("r1")]
    assert actions == ["requested", "claimed", "overridden"]
    events = env.events()
    assert [e["action"] for e in events] == ["requested", "claimed", "decided"]
    for e in events:
        jsonschema.validate(e, SCHEMA)
        assert e["decision_id"] == "r1/0"
    assert events[2]["reviewer"] == "alice" and events[2]["outcome"] == "repaid"
    assert events[2]["reason"] == "override: income verified by phone"
    records = store.history("r1/0")
    # Each event points into the audit chain: its predecessor and its own record.
    assert [e["previous_audit_hash"] for e in events] == [r.prev_hash for r in records]
    assert [e["audit_hash"] for e in events] == [r.hash for r in records]
    assert store.verify().ok


def test_approve_keeps_the_models_answer_as_the_outcome(env: ReviewEnv) -> None:
    env.store.enqueue(make_decision("r2"))
    env.store.claim("r2/0", "alice")
    item = env.store.decide("r2/0", "alice", "approve", None, "looks right")
    assert item.action == "approve" and item.outcome == "default"
    assert env.events()[-1]["outcome"] == "default"


def test_the_same_decision_is_queued_once(env: ReviewEnv) -> None:
    assert env.store.enqueue(make_decision("dup")) is not None
    assert env.store.enqueue(make_decision("dup")) is None
    assert env.store.counts() == {"pending": 1}
    assert "sidecar_review_duplicates_total 1" in env.registry.render()


def test_refused_transitions_change_nothing(env: ReviewEnv) -> None:
    store = env.store
    store.enqueue(make_decision("r3"))
    head = store.audit_head()
    with pytest.raises(NotFound):
        store.claim("nope/0", "alice")
    with pytest.raises(Conflict, match="claim it first"):
        store.decide("r3/0", "alice", "approve", None, "x")
    with pytest.raises(Conflict, match="not claimed"):
        store.release("r3/0", "alice")
    store.claim("r3/0", "alice")
    head = store.audit_head()
    with pytest.raises(Conflict, match="claimed by alice"):
        store.claim("r3/0", "bob")
    with pytest.raises(Forbidden, match="decides only what they claimed"):
        store.decide("r3/0", "bob", "override", "repaid", "mine now")
    with pytest.raises(Forbidden):
        store.release("r3/0", "bob")
    assert store.audit_head() == head
    item = store.get("r3")
    assert item is not None and item.status == "claimed" and item.claimed_by == "alice"
    store.decide("r3/0", "alice", "approve", None, "fine")
    with pytest.raises(Conflict, match="already decided"):
        store.decide("r3/0", "alice", "override", "repaid", "changed my mind")
    with pytest.raises(Conflict, match="already decided"):
        store.claim("r3/0", "bob")


def test_a_lapsed_lease_returns_the_item_to_pending(tmp_path: Path) -> None:
    clock = Clock()
    env = build_env(tmp_path, {"lease_seconds": 60}, clock=clock)
    store = env.store
    store.enqueue(make_decision("r4"))
    store.claim("r4/0", "alice")
    clock.now += 59
    assert store.expire_leases() == 0
    claimed = store.claim("r4/0", "alice")  # renewing extends the lease
    assert claimed.lease_expires == clock.now + 60
    clock.now += 61
    listed = store.list_items(status="pending")
    assert [i.item_id for i in listed] == ["r4/0"] and listed[0].claimed_by is None
    with pytest.raises(Conflict, match="lease expired"):
        store.decide("r4/0", "alice", "approve", None, "too late")
    assert store.claim("r4/0", "bob").claimed_by == "bob"
    actions = [r.action for r in store.history("r4/0")]
    assert actions == ["requested", "claimed", "renewed", "lease_expired", "claimed"]
    assert [e["action"] for e in env.events()] == [
        "requested",
        "claimed",
        "claimed",
        "released",
        "claimed",
    ]
    assert env.events()[3]["reason"] == "lease_expired" and env.events()[3]["reviewer"] is None
    assert store.verify().ok
    store.close()
    env.sink.close()


def test_two_reviewers_race_for_each_item_and_exactly_one_wins(env: ReviewEnv) -> None:
    store = env.store
    ids = [f"race{i}" for i in range(40)]
    for rid in ids:
        store.enqueue(make_decision(rid))
    for rid in ids:
        start = threading.Barrier(2)
        outcome: dict[str, str] = {}

        def claim(
            name: str,
            rid: str = rid,
            start: threading.Barrier = start,
            outcome: dict[str, str] = outcome,
        ) -> None:
            start.wait()
            try:
                store.claim(f"{rid}/0", name)
                outcome[name] = "won"
            except Conflict:
                outcome[name] = "lost"

        threads = [threading.Thread(target=claim, args=(n,)) for n in ("alice", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcome.values()) == ["lost", "won"], rid
        winner = next(n for n, o in outcome.items() if o == "won")
        item = store.get(rid)
        assert item is not None and item.claimed_by == winner
    assert store.counts() == {"claimed": len(ids)}
    assert store.verify().ok


def test_concurrent_decisions_on_one_claim_record_exactly_one(env: ReviewEnv) -> None:
    store = env.store
    store.enqueue(make_decision("twice"))
    store.claim("twice/0", "alice")
    start = threading.Barrier(8)
    results: list[str] = []

    def decide(i: int) -> None:
        start.wait()
        try:
            store.decide("twice/0", "alice", "override", f"outcome-{i}", f"attempt {i}")
            results.append("ok")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 7 + ["ok"]
    decided = [r for r in store.history("twice/0") if r.action == "overridden"]
    assert len(decided) == 1


def test_list_filters_and_pages(env: ReviewEnv) -> None:
    store = env.store
    for i in range(7):
        d = make_decision(f"p{i}", reason="band" if i % 2 else "low_confidence")
        store.enqueue(d)
    store.claim("p0/0", "alice")
    assert [i.item_id for i in store.list_items(reason="band")] == ["p1/0", "p3/0", "p5/0"]
    assert [i.item_id for i in store.list_items(claimed_by="alice")] == ["p0/0"]
    assert [i.item_id for i in store.list_items(status="claimed")] == ["p0/0"]
    first = store.list_items(limit=3)
    rest = store.list_items(after=first[-1].seq, limit=10)
    assert [i.item_id for i in first + rest] == [f"p{i}/0" for i in range(7)]
    assert store.list_items(model="other") == []


def test_the_store_survives_a_reopen(tmp_path: Path) -> None:
    env = build_env(tmp_path)
    env.store.enqueue(make_decision("keep"))
    env.store.claim("keep/0", "alice")
    head = env.store.audit_head()
    env.store.close()
    env2 = build_env(tmp_path)
    item = env2.store.get("keep/0")
    assert item is not None and item.claimed_by == "alice"
    assert env2.store.audit_head() == head and env2.store.verify(head[1]).ok
    mode = env2.store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    env2.store.close()
    env.sink.close()
    env2.sink.close()


def test_counts_follow_this_store_writes_at_once(env: ReviewEnv) -> None:
    # Counts are cached for a second for scrapes and the console, but never across a write.
    store = env.store
    assert store.counts() == {}
    store.enqueue(make_decision("c1", confidence=0.4))
    assert store.counts() == {"pending": 1}
    store.claim("c1/0", "alice")
    assert store.counts() == {"claimed": 1}


def test_an_item_whose_features_are_not_finite_reads_back_as_stored(env: ReviewEnv) -> None:
    """Missing values arrive as NaN: stored as JSON's NaN, which orjson refuses to read."""
    features = [float("nan"), float("inf"), 2**70, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    env.store.enqueue(make_decision("nf", features=features), explanation={"top": ["a"]})
    page = env.store.list_items(limit=10)
    assert [i.item_id for i in page] == ["nf/0"]
    got = page[0].decision["features"]
    assert (
        got[0] != got[0] and got[1] == float("inf") and got[2] == 2**70 and got[3:] == features[3:]
    )
    assert env.store.get("nf/0").explanation == {"top": ["a"]}


def test_queue_page_summaries_are_the_items_own(env: ReviewEnv) -> None:
    """The queue page reads summaries (an item's state and four facts of its decision), not
    whole items: page for page they are what the items say, whichever process queued the
    item."""
    store = env.store
    for i in range(6):
        store.enqueue(
            make_decision(f"s{i}", confidence=0.5 + i / 100, reason="band" if i % 2 else "low")
        )
    store.enqueue(make_decision("nan", features=[float("nan")] * 10))
    store.claim("s1/0", "alice")
    store.claim("s2/0", "bob")
    store.decide("s2/0", "bob", "override", "approve", "checked")
    store.contest(
        decision_to_dict(make_decision("front", review=None, reason=None)),
        actor="cara",
        statement="wrong",
        corrected=None,
        rescore=None,
        reasons=None,
    )
    # Another process (the data plane's own store) queues into the same database.
    registry = Registry()
    other = SqliteReviewStore(env.db_path, sink=NullSink(registry), registry=registry)
    other.enqueue(make_decision("late", confidence=0.51))
    other.close()
    pages = [
        {},
        {"limit": 2},
        {"status": "pending"},
        {"status": "decided"},
        {"reason": "band"},
        {"claimed_by": "alice"},
        {"model": "credit", "limit": 4},
        {"model": "other"},
    ]
    for kw in pages:
        items = store.list_items(**kw)  # type: ignore[arg-type]
        assert store.list_summaries(**kw) == [ItemSummary.of(i) for i in items], kw  # type: ignore[arg-type]
    after, seen = 0, []
    while page := store.list_summaries(after=after, limit=3):
        seen += [s.item_id for s in page]
        after = page[-1].seq
    assert seen == [i.item_id for i in store.list_items(limit=100)]
    assert seen[0] == "front/0" and "late/0" in seen and len(seen) == 9
