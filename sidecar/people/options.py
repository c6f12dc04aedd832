"""Recourse for the person: changes to what they can act on that would turn the decision.

The search is `explainers.recourse.search` on the explained ensemble; every option is
re-scored with the model's own runtime before it is offered.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from explainers.recourse import search
from sidecar.people.context import PeopleContext, Unanswerable, shown

WHAT_IT_IS = (
    "Each option is a change to features you can act on that, with everything else as it"
    " was, makes the same model give the favourable outcome; it is the smallest such change"
    " found. It is not a promise of approval: a new application is decided on everything it"
    " says then."
)


def recourse_for(ctx: PeopleContext, decision: dict[str, Any]) -> dict[str, Any]:
    """The recourse document for an unfavourable decision (none for a favourable one)."""
    body: dict[str, Any] = {
        "decision_id": decision["decision_id"],
        "favourable_label": ctx.favourable_label,
        "options": [],
        "what_it_is": WHAT_IT_IS,
        "confirmed_by": ctx.runtime,
        "note": None,
    }
    if ctx.is_favourable(decision):
        body["note"] = "The decision is favourable: there is nothing to change."
        return body
    if not ctx.actionable or ctx.max_options == 0 or ctx.ensemble is None:
        body["note"] = "Recourse is not configured (recourse.features)."
        return body
    ens = ctx.ensemble
    fav = ctx.favourable(ens.n_outputs)
    if ctx.reference is None:
        raise Unanswerable(
            503, "the model's own runtime is not installed: recourse options cannot be confirmed"
        )
    row = ctx.row(decision)
    started = time.perf_counter()
    found = search(
        ens,
        fav,
        row,
        ctx.actionable,
        max_options=ctx.max_options,
        max_pair_candidates=ctx.max_pair_candidates,
        reference=ctx.reference,
    )
    for opt in found.options:
        body["options"].append(
            {
                "changes": [
                    {
                        "feature": ctx.feature_names[j],
                        "label": ctx.catalogue.label(ctx.feature_names[j]),
                        "from": shown(row[j], ens),
                        "to": shown(v, ens),
                    }
                    for j, v in sorted(opt.changes.items())
                ],
                "favourable_probability": round(opt.score, 4),
                "cost": round(opt.cost, 6),
            }
        )
    body["search"] = {
        "rows_scored": found.scored,
        "pairs_capped": found.pairs_capped,
        "seconds": round(time.perf_counter() - started, 6),
    }
    if not body["options"]:
        body["note"] = "No change within the actionable features and their bounds was found."
    return body


class RecourseCache:
    """The recourse found per decision id, least recently used dropped past `size`.

    A decision's features and its model's context never change, so neither does its
    recourse: a notice read again (the person, then the case handler, then the reviewer)
    does not search again (70-140 ms at the median on a 300-tree depth-6 model on a busy
    2-core machine, loadtests/bench_people.py).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._found: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx: PeopleContext, decision: dict[str, Any]) -> dict[str, Any]:
        """`decision`'s recourse under `ctx` (its model's context: one id, one model)."""
        key = str(decision["decision_id"])
        with self._lock:
            hit = self._found.get(key)
            if hit is not None:
                self._found.move_to_end(key)
                return hit
        body = recourse_for(ctx, decision)
        with self._lock:
            self._found[key] = body
            while len(self._found) > self._size:
                self._found.popitem(last=False)
        return body
