"""The review store's contests: front of the queue in filing order, pages that neither skip
nor repeat across contested and routed items, one transaction with the audit chain."""

from __future__ import annotations

from pathlib import Path

from sidecar.metrics import Registry
from sidecar.review.model import decision_to_dict
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks.null import NullSink
from tests.review.review_helpers import make_decision


def _store(tmp_path: Path) -> SqliteReviewStore:
    registry = Registry()
    return SqliteReviewStore(tmp_path / "review.db", sink=NullSink(registry), registry=registry)


def test_contested_items_lead_the_queue_and_pages_stay_whole(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for name in ("a", "b", "c", "d"):
        store.enqueue(make_decision(name))
    new = decision_to_dict(make_decision("e", review=None, reason=None))
    for d in (new, store.get("b/0").decision):  # type: ignore[union-attr]
        _, created = store.contest(
            d, actor="cara", statement="wrong", corrected=None, rescore=None, reasons=None
        )
        assert created
    order = [i.item_id for i in store.list_items(limit=10)]
    assert order == ["e/0", "b/0", "a/0", "c/0", "d/0"]
    paged: list[str] = []
    after = 0
    while True:
        page = store.list_items(after=after, limit=2)
        paged += [i.item_id for i in page]
        if len(page) < 2:
            break
        after = page[-1].seq
    assert paged == order
    assert [i.item_id for i in store.list_items(reason="contested")] == ["e/0", "b/0"]
    # Idempotent: the earlier contest comes back, nothing moves, nothing is audited again.
    again, created = store.contest(
        new, actor="carl", statement="other", corrected=None, rescore=None, reasons=None
    )
    assert not created and again.filed_by == "cara" and again.statement == "wrong"
    assert [r.action for r in store.history("e/0")] == ["contested"]
    assert [r.action for r in store.history("b/0")] == ["requested", "contested"]
    assert store.verify().ok
    store.close()


def test_resolution_is_recorded_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    d = decision_to_dict(make_decision("z", review=None, reason=None))
    store.contest(
        d, actor="cara", statement="s", corrected={"income": 1.0}, rescore=None, reasons=None
    )
    store.claim("z/0", "rita")
    store.decide("z/0", "rita", "approve", None, "checked")
    first = store.get_contest("z/0")
    assert first is not None and first.resolved_at is not None
    assert first.corrected == {"income": 1.0}
    store.close()
