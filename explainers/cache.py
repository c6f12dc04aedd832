"""A bounded LRU of explanations keyed by (model version, feature-vector hash)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np

V = TypeVar("V")


def row_key(model_version: str, row: np.ndarray) -> tuple[str, bytes]:  # type: ignore[type-arg]
    """Hash of the exact float64 bytes of the prepared row (NaN payloads are canonical after
    prepare(), so equal rows give equal keys)."""
    return model_version, hashlib.blake2b(row.tobytes(), digest_size=16).digest()


class LRUCache(Generic[V]):
    """Thread-safe LRU bounded by entries; counts hits, misses and evictions."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, bytes], V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple[str, bytes]) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, bytes], value: V) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self.evictions += 1
