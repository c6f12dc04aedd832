"""Whether the sidecar's lookup store still has the decision an outcome is for.

An outcome for a decision the store lacks is still emitted (the decision may be
weeks old, or another replica's): `decision_known` tells consumers what this
sidecar can say. Call ids are UUIDv7s (time-ordered, as strings too), so an id
newer than every call the store has forgotten (and than the start), and not in
it, was never recorded here (`false`; or not yet, within a flush interval of its
answer); an older one may have been forgotten (`null`). Calls are recorded when
answered, not in the order they were made, so the oldest call kept is no bound.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

from sidecar.decisions import split_decision_id

# The sidecar's own call ids: 32 hex digits, version 7.
_CALL_ID = re.compile(r"[0-9a-f]{12}7[0-9a-f]{19}\Z")


class DecisionIndex(Protocol):
    """What is asked of the lookup store (sidecar.control.store.DecisionStore)."""

    def get(self, decision_id: str) -> Any: ...
    def contains_many(self, decision_ids: Sequence[str]) -> list[bool]: ...
    @property
    def newest_forgotten(self) -> str | None: ...


def call_id_at(unix_s: float) -> str:
    """The smallest call id minted at this time: the decision ids' time order as a string."""
    return f"{int(unix_s * 1000) << 80:032x}"


class KnownDecisions:
    """`decision_known` for outcomes: true, false, or null when this sidecar cannot tell."""

    def __init__(self, store: DecisionIndex | None, started: float | None = None) -> None:
        self._store = store
        # Nothing before the start was recorded by this process: until the store forgets
        # a call, only ids newer than the start are known to be missing.
        self._started = call_id_at(time.time() if started is None else started)

    def __call__(self, decision_ids: Sequence[str]) -> list[bool | None]:
        """For a batch at once: from the control process, two questions to the store in all."""
        store = self._store
        if store is None:
            return [None] * len(decision_ids)
        held = store.contains_many(decision_ids)
        if all(held):
            return [True] * len(held)
        horizon = store.newest_forgotten or self._started
        return [
            True if h else self._missing(d, horizon)
            for d, h in zip(decision_ids, held, strict=True)
        ]

    @staticmethod
    def _missing(decision_id: str, horizon: str) -> bool | None:
        call_id, _ = split_decision_id(decision_id)
        if not _CALL_ID.match(call_id):
            return None
        # By millisecond: ids of one millisecond are in no order among themselves.
        return False if call_id[:12] > horizon[:12] else None
