"""Recent decisions and their explanations, kept for lookup by id.

Bounded by `decisions.retention` (oldest forgotten first). Each entry is
kept serialised (orjson bytes), not as live objects: a hundred thousand
decisions held as dataclasses, lists and dicts are half a million objects
the garbage collector walks on every full collection (measured: pauses of
150-200 ms in the proxy's p99.9), while bytes are not tracked at all.
Held in memory: a restart forgets them; the event stream is the record.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import orjson

from sidecar.decisions import Decision, field_values, from_values, split_decision_id
from sidecar.metrics import Registry

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def _kept(data: bytes) -> bytes:
    """An exact-size copy of orjson output that is kept for long.

    orjson writes into a 4 KiB buffer and shrinks it in place; glibc leaves the
    freed tail as a hole between kept entries that later buffers do not fit.
    Kept as they come, entries of ~400 bytes cost ~4.1 KiB of memory each
    (measured), and every decision faulted a fresh page in (~1 per request on the
    proxy benchmark). The copy is exact-size and the buffer is freed whole.
    """
    return memoryview(data).tobytes()


def pack(d: Decision) -> bytes:
    """A decision as a JSON array of its field values, in `DECISION_FIELDS` order.

    An array rather than an object: the names would add ~265 bytes to each of up to
    `decisions.retention` entries. Entries live only in this process, so the order
    they were packed in is the order they are read back in.
    """
    return _kept(orjson.dumps(field_values(d), option=_OPTS))


def unpack(data: bytes) -> Decision:
    return from_values(orjson.loads(data))


class DecisionStore:
    def __init__(self, retention: int, registry: Registry) -> None:
        self._retention = retention
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._explanations: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()
        self._evicted = registry.counter(
            "sidecar_decisions_forgotten_total",
            "Decisions dropped from the lookup store by retention",
        )
        registry.gauge(
            "sidecar_decisions_retained", "Decisions held for lookup", fn=lambda: float(len(self))
        )

    def __len__(self) -> int:
        return len(self._items)

    def add(self, decisions: list[Decision]) -> None:
        packed = [((d.request_id, d.row), pack(d)) for d in decisions]
        with self._lock:
            items = self._items
            for key, data in packed:
                items[key] = data
            while len(items) > self._retention:
                key, _ = items.popitem(last=False)
                self._explanations.pop(key, None)
                self._evicted.inc()

    def get(self, decision_id: str) -> Decision | None:
        """By `R/i`, or a bare request id `R` for its first row."""
        key = split_decision_id(decision_id)
        with self._lock:
            data = self._items.get(key)
        return None if data is None else unpack(data)

    def set_explanation(self, decision: Decision, explanation: dict[str, Any]) -> None:
        key = (decision.request_id, decision.row)
        data = _kept(orjson.dumps(explanation, option=_OPTS))
        with self._lock:
            if key in self._items:
                self._explanations[key] = data

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None:
        key = split_decision_id(decision_id)
        with self._lock:
            data = self._explanations.get(key)
        if data is None:
            return None
        explanation: dict[str, Any] = orjson.loads(data)
        return explanation
