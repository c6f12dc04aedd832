"""The lookup store adds nothing to what the garbage collector walks.

A full collection walks every tracked object; a store of `decisions.retention`
decisions held as live objects made the proxy's tail pauses (module doc of
`sidecar.control.store`). Counted, not timed: the objects the collector tracks
as the store grows from 1,000 calls to 5,000 (first-use caches settle in the first).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from sidecar.control.store import SHARDS, DecisionStore
from sidecar.metrics import Registry
from tests.eventlib import make_decision


def _tracked() -> int:
    # Twice: a call's tuple is untracked once the rows tuple inside it is, which can take
    # a second pass.
    gc.collect()
    gc.collect()
    return len(gc.get_objects())


def _growth(fill: Callable[[int], None]) -> int:
    """Objects tracked after calls 1,000-4,999 are filled, beyond those after calls 0-999."""
    for i in range(1_000):
        fill(i)
    before = _tracked()
    for i in range(1_000, 5_000):
        fill(i)
    return _tracked() - before


def test_a_full_store_adds_no_objects_for_the_collector_to_walk() -> None:
    store = DecisionStore(100_000, Registry())

    def fill(i: int) -> None:
        # Multi-row calls, request ids, explanations: every shape an entry takes.
        rows = [
            make_decision(i, call_id=f"call{i:06d}", row=r, request_id=f"r{i}") for r in range(3)
        ]
        store.add(rows)
        store.set_explanation(rows[1], {"contributions": [0.1, 0.2]})

    grew = _growth(fill)
    assert len(store) == 3 * 5_000
    assert store.get_explanation("call004999/1") == {"contributions": [0.1, 0.2]}
    # Before: a record object and a list per call and a deque per request id, 12,000 here.
    assert grew < 20, f"{grew} more objects tracked for 4,000 more calls"


def test_request_ids_many_calls_carried_are_one_tracked_object_each() -> None:
    store = DecisionStore(100_000, Registry())

    def fill(i: int) -> None:
        store.add([make_decision(i, call_id=f"call{i:06d}", request_id=f"retried{i % 10}")])

    # Ten request ids, each carried by 500 calls: ten deques, made in the first thousand.
    assert _growth(fill) < 20
    page, more = store.by_request("retried3")
    assert [d.call_id for d in page] == [f"call{i:06d}" for i in range(3, 1000, 10)]
    assert more


def test_no_one_table_holds_more_than_a_small_share_of_the_calls() -> None:
    # A dict rehashes every entry it holds when it grows, holding the interpreter: one
    # table of 87,381 calls did so for 16 ms, stalling the proxy (store module doc).
    # Counted, not timed: the largest table the calls and the index are kept in.
    store = DecisionStore(100_000, Registry())
    calls = 20_000
    for i in range(calls):
        store.add([make_decision(i, call_id=f"call{i:06d}", request_id=f"r{i}")])
    for shards in (store._calls, store._by_request):
        largest = max(len(m) for m in shards._maps)
        assert largest <= 2 * calls // SHARDS, largest
    assert store.by_request("r19999")[0][0].call_id == "call019999"
