"""Recent decisions and their explanations, kept for lookup by id.

Bounded by `decisions.retention` (number of requests' worth of rows is not
known in advance, so the bound counts decisions); oldest go first. Held in
memory: a restart forgets them, while the event stream keeps the record.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sidecar.decisions import Decision, split_decision_id
from sidecar.metrics import Registry


class DecisionStore:
    def __init__(self, retention: int, registry: Registry) -> None:
        self._retention = retention
        self._items: OrderedDict[tuple[str, int], Decision] = OrderedDict()
        self._explanations: dict[tuple[str, int], dict[str, Any]] = {}
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
        with self._lock:
            for d in decisions:
                self._items[(d.request_id, d.row)] = d
            while len(self._items) > self._retention:
                key, _ = self._items.popitem(last=False)
                self._explanations.pop(key, None)
                self._evicted.inc()

    def get(self, decision_id: str) -> Decision | None:
        """By `R/i`, or a bare request id `R` for its first row."""
        key = split_decision_id(decision_id)
        with self._lock:
            return self._items.get(key)

    def set_explanation(self, decision: Decision, explanation: dict[str, Any]) -> None:
        key = (decision.request_id, decision.row)
        with self._lock:
            if key in self._items:
                self._explanations[key] = explanation

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None:
        key = split_decision_id(decision_id)
        with self._lock:
            return self._explanations.get(key)
