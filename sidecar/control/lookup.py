"""Finding a decision and its explanation for the control plane.

A decision is looked up in the decision store (recent decisions, bounded by
`decisions.retention` and `decisions.retention_bytes`) and then in the review queue (which keeps its own
copy). Its explanation is the one the background stage made when it was
sampled; otherwise it is computed on demand from the recorded features and
kept in a bounded LRU (`review.explanation_cache_size`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, Protocol

from sidecar.decisions import DECISION_FIELDS, Decision
from sidecar.metrics import Registry
from sidecar.review.model import ReviewItem, ReviewStore, decision_to_dict, normalise_item_id

log = logging.getLogger("sidecar.review")

ExplainFn = Callable[[Decision], dict[str, Any]]
Source = Literal["sampled", "review_item", "on_demand", "cached"]


class DecisionSource(Protocol):
    """The decision store's read side (sidecar.control.store.DecisionStore)."""

    def get(self, decision_id: str) -> Decision | None: ...

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None: ...

    def by_request(
        self, request_id: str, *, after: str | None = None, limit: int = 100
    ) -> tuple[list[Decision], bool]: ...


def decision_from_dict(d: dict[str, Any]) -> Decision:
    """The inverse of `decision_to_dict`: `DECISION_FIELDS` by name, the rest ignored.

    A field missing from `d` takes its default, so a review item stored before the
    field was added still reads back. Items stored before ids were minted per call
    carry only `request_id`, which was then the id's root: it becomes their `call_id`.
    """
    if "call_id" not in d and "request_id" in d:
        d = {**d, "call_id": d["request_id"]}
    return Decision(**{name: d[name] for name in DECISION_FIELDS if name in d})


def _key(decision: dict[str, Any]) -> str:
    return f"{decision.get('call_id', decision.get('request_id'))}/{decision['row']}"


class Explanations:
    """Decision and explanation lookup, with on-demand explanation and its cache."""

    def __init__(
        self,
        *,
        store: ReviewStore,
        decisions: DecisionSource | None,
        explain_now: ExplainFn | None,
        cache_size: int,
        registry: Registry,
    ) -> None:
        self._store = store
        self._decisions = decisions
        self._explain_now = explain_now
        self._cache_size = cache_size
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Why an explanation failed, by key, bounded alike: the artifact does not change while
        # the process runs, so the same decision would fail again, and a console open on
        # it would recompute (and log) the failure on every refresh.
        self._failures: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._on_demand = registry.counter(
            "sidecar_explanations_on_demand_total", "Explanations computed for a lookup"
        )
        self._failed = registry.counter(
            "sidecar_explanations_on_demand_failed_total", "On-demand explanations that failed"
        )

    def find(self, decision_id: str) -> tuple[dict[str, Any], ReviewItem | None] | None:
        """The decision (as a dict) and its review item, if either store knows it."""
        key = normalise_item_id(decision_id)
        item = self._store.get(key)
        found = self._decisions.get(key) if self._decisions is not None else None
        if found is not None:
            return decision_to_dict(found), item
        if item is not None:
            return item.decision, item
        return None

    def by_request(
        self, request_id: str, *, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The recent decisions carrying the client's request id (as dicts), and whether more follow."""
        if self._decisions is None:
            return [], False
        found, more = self._decisions.by_request(request_id, after=after, limit=limit)
        return [decision_to_dict(d) for d in found], more

    def explain(
        self, decision: dict[str, Any], item: ReviewItem | None
    ) -> tuple[dict[str, Any] | None, Source | None, str | None]:
        """(explanation, where it came from, why there is none)."""
        if self._decisions is not None:
            sampled = self._decisions.get_explanation(_key(decision))
            if sampled is not None:
                return sampled, "sampled", None
        return self.explain_unsampled(decision, item)

    def explain_unsampled(
        self, decision: dict[str, Any], item: ReviewItem | None
    ) -> tuple[dict[str, Any] | None, Source | None, str | None]:
        """`explain` for a caller that has already looked for a sampled explanation (the
        hub's one-statement lookup): the review item's, the cache's, or one computed now."""
        key = _key(decision)
        if item is not None and item.explanation is not None:
            return item.explanation, "review_item", None
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached, "cached", None
            failed = self._failures.get(key)
        if failed is not None:
            return None, None, failed
        if self._explain_now is None:
            return None, None, "no model artifact is configured (model.artifact); cannot explain"
        if not decision.get("features"):
            return None, None, "the decision has no recorded features to explain"
        try:
            explanation = self._explain_now(decision_from_dict(decision))
        except Exception as exc:
            self._failed.inc()
            log.warning("on-demand explanation of %s failed: %s", key, exc)
            why = f"explanation failed: {exc}"
            if self._cache_size > 0:
                with self._lock:
                    self._failures[key] = why
                    while len(self._failures) > self._cache_size:
                        self._failures.popitem(last=False)
            return None, None, why
        self._on_demand.inc()
        if item is not None:
            self._store.set_explanation(key, explanation)
        if self._cache_size > 0:
            with self._lock:
                self._cache[key] = explanation
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return explanation, "on_demand", None
