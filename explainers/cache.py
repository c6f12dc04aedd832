"""A bounded LRU of explanations keyed by (model version, feature-vector hash).

The cache lives in the process that forwards inference calls, and a dict of n entries
is rehashed whole, with the interpreter held, each time it runs out of slots: at
100,000 entries one OrderedDict stalled every thread of that process for 10 ms (19 ms on
a busy machine), and once full it does so again every ~250,000 inserts. A large cache is therefore split into
segments of at most `SEGMENT_ENTRIES`, each its own LRU over the keys whose hash falls in
it (as Guava's and Caffeine's segmented caches are): a rehash walks one segment, and the
LRU order is exact within a segment and approximate across them. A cache of up to
`SEGMENT_ENTRIES` is one segment, an exact LRU.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Final, Generic, TypeVar

import numpy as np

V = TypeVar("V")

# The most entries one segment holds: the slowest of 300,000 puts into a full cache of
# 100,000 in such segments took 0.56 ms here.
SEGMENT_ENTRIES: Final = 2048
# The most segments: a power of two, picked by the key hash's first byte.
MAX_SEGMENTS: Final = 256


def row_key(model_version: str, row: np.ndarray) -> tuple[str, bytes]:  # type: ignore[type-arg]
    """Hash of the exact float64 bytes of the prepared row (NaN payloads are canonical after
    prepare(), so equal rows give equal keys)."""
    return model_version, hashlib.blake2b(row.tobytes(), digest_size=16).digest()


def segments_for(max_entries: int) -> int:
    """How many segments a cache of `max_entries` is split into: the smallest power of two
    that keeps each under `SEGMENT_ENTRIES`, at most `MAX_SEGMENTS`."""
    n = 1
    while n < MAX_SEGMENTS and max_entries > n * SEGMENT_ENTRIES:
        n *= 2
    return n


class LRUCache(Generic[V]):
    """Thread-safe LRU bounded by entries; counts hits, misses and evictions."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        n = segments_for(max_entries)
        self._mask = n - 1
        self._segments: list[OrderedDict[tuple[str, bytes], V]] = [OrderedDict() for _ in range(n)]
        # The segments' bounds add up to max_entries exactly.
        base, extra = divmod(max_entries, n)
        self._bounds = [base + (1 if i < extra else 0) for i in range(n)]
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def segments(self) -> int:
        return len(self._segments)

    def __len__(self) -> int:
        return sum(len(s) for s in self._segments)

    def _index(self, key: tuple[str, bytes]) -> int:
        # The key's second part is a hash already (row_key); any other bytes still spread.
        digest = key[1]
        return (digest[0] if digest else 0) & self._mask

    def get(self, key: tuple[str, bytes]) -> V | None:
        segment = self._segments[self._index(key)]
        with self._lock:
            value = segment.get(key)
            if value is None:
                self.misses += 1
                return None
            segment.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, bytes], value: V) -> None:
        if self.max_entries == 0:
            return
        i = self._index(key)
        segment, bound = self._segments[i], self._bounds[i]
        with self._lock:
            segment[key] = value
            segment.move_to_end(key)
            while len(segment) > bound:
                segment.popitem(last=False)
                self.evictions += 1
