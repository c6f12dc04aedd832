from __future__ import annotations

import gc

import numpy as np

from explainers.cache import SEGMENT_ENTRIES, LRUCache, row_key, segments_for
from explainers.explainer import ExplainerOptions, build_explainer
from tests.explain.explain_models import Trained


def test_lru_evicts_least_recently_used() -> None:
    c: LRUCache[int] = LRUCache(2)
    a, b, d = ("v", b"a"), ("v", b"b"), ("v", b"d")
    c.put(a, 1)
    c.put(b, 2)
    assert c.get(a) == 1  # a is now the most recent
    c.put(d, 3)
    assert c.get(b) is None and c.get(a) == 1 and c.get(d) == 3
    assert (c.hits, c.misses, c.evictions, len(c)) == (3, 1, 1, 2)


def test_a_large_cache_is_segments_no_rehash_walks_whole() -> None:
    # A dict is rehashed whole, interpreter held, when it runs out of slots: at 100,000
    # entries one table stalled the proxy's process 19 ms. Sized, not timed.
    c: LRUCache[int] = LRUCache(100_000)
    assert c.segments == segments_for(100_000) == 64
    keys = [row_key("v", np.array([float(i)])) for i in range(130_000)]
    for i, k in enumerate(keys):
        c.put(k, i)
    sizes = [len(s) for s in c._segments]
    assert len(c) == 100_000 and c.evictions == 30_000
    assert max(sizes) <= SEGMENT_ENTRIES and min(sizes) > 0
    # Within a segment the order is exact LRU: a read keeps an entry that would go next.
    seg = c._index(keys[-1])
    oldest = next(iter(c._segments[seg]))
    assert c.get(oldest) is not None
    for k in (row_key("w", np.array([float(i)])) for i in range(10_000)):
        if c._index(k) == seg:
            c.put(k, 0)
            break
    assert oldest in c._segments[seg]


def test_a_small_cache_is_one_exact_lru() -> None:
    assert segments_for(SEGMENT_ENTRIES) == 1 and segments_for(SEGMENT_ENTRIES + 1) == 2
    c: LRUCache[int] = LRUCache(SEGMENT_ENTRIES)
    keys = [row_key("v", np.array([float(i)])) for i in range(SEGMENT_ENTRIES + 1)]
    for i, k in enumerate(keys[:-1]):
        c.put(k, i)
    c.get(keys[0])
    c.put(keys[-1], -1)
    # The least recently used across the whole cache went: keys[1], not keys[0].
    assert c.get(keys[1]) is None and c.get(keys[0]) == 0 and len(c) == SEGMENT_ENTRIES


def test_keys_follow_version_and_exact_values() -> None:
    row = np.array([1.0, np.nan, 2.0])
    assert row_key("v1", row) == row_key("v1", row.copy())
    assert row_key("v1", row) != row_key("v2", row)
    assert row_key("v1", row) != row_key("v1", np.array([1.0, np.nan, 2.0000000001]))


def test_batch_fills_and_reads_the_cache(xgb_models: dict[str, Trained]) -> None:
    m = xgb_models["binary"]
    ex = build_explainer(m.path, model_version="v1", options=ExplainerOptions(cache_entries=50))
    X = m.X[:40].astype(np.float64)
    first = ex.explain(X)
    assert not any(e.cache_hit for e in first)
    again = ex.explain(np.vstack([X[:10], m.X[40:45]]))
    assert [e.cache_hit for e in again] == [True] * 10 + [False] * 5
    assert again[3].contributions == first[3].contributions
    ex.explain(m.X[45:60])
    assert len(ex.cache) == 50 and ex.cache.evictions == 10


def test_a_full_cache_adds_no_objects_for_the_collector_to_walk(
    xgb_models: dict[str, Trained],
) -> None:
    # The cache lives in the process that forwards inference calls: what a full collection
    # walks there is a pause in the proxy's tail. Counted, not timed.
    m = xgb_models["binary"]
    ex = build_explainer(m.path, model_version="v1", options=ExplainerOptions(cache_entries=10**6))
    X = np.random.default_rng(0).normal(size=(4_000, m.X.shape[1]))

    def tracked() -> int:
        gc.collect()
        gc.collect()
        return len(gc.get_objects())

    # First-use caches (the single-row and the batch paths' own) settle.
    ex.explain(X[:400])
    for row in X[400:500]:
        ex.explain(row[None, :])
    before = tracked()
    # Single rows, as the explain stage mostly sends them, and a batch.
    for row in X[500:1000]:
        ex.explain(row[None, :])
    ex.explain(X[1000:])
    assert len(ex.cache) == 4_000
    assert tracked() - before < 20
    # Entries read back whole: a hit equals the explanation that filled it.
    assert ex.explain(X[600:601])[0].contributions == ex.explain(X[600:601])[0].contributions
    assert ex.explain(X[600:601])[0].cache_hit
