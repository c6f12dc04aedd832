"""Principal reasons: the features that pushed a decision toward the unfavourable outcome.

Taken from the same explanation the lookup serves (`sidecar.control.lookup`): the
contributions toward the favourable class (by `model.favourable_label`, whichever
class the model scores), the negative ones largest first, features that must not
be given as reasons left out. Only their sign and order matter here; the values
are reported in the explanation's own space (`contribution_space`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explainers.recourse import direction
from sidecar.people.context import PeopleContext, Unanswerable, shown


def usable(explanation: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """The explanation, or why it cannot be given as the reason for the model's answer."""
    if explanation is None:
        raise Unanswerable(409, f"the decision has no explanation: {error or 'none was made'}")
    if explanation.get("fidelity") == "mismatch":
        # The explained model did not give the server's answer: its contributions are not
        # the reasons for that answer, and must never be presented as them.
        raise Unanswerable(
            409, "the explanation does not match what the model server answered (fidelity mismatch)"
        )
    return explanation


def principal_reasons(
    ctx: PeopleContext, decision: dict[str, Any], explanation: dict[str, Any]
) -> dict[str, Any]:
    """The reasons document: outcome, whether it is favourable, and the principal reasons."""
    outcome = ctx.outcome(decision)
    contributions = explanation["contributions"]
    fav = ctx.favourable(len(contributions))
    favourable = outcome == ctx.favourable_label
    body: dict[str, Any] = {
        "decision_id": decision["decision_id"],
        "outcome": outcome,
        "favourable_label": ctx.favourable_label,
        "favourable": favourable,
        "language": ctx.catalogue.language,
        "contribution_space": explanation.get("output_space", "margin"),
        "reasons": [],
        "note": None,
    }
    if favourable:
        body["note"] = "The decision is favourable: there are no principal reasons against it."
        return body
    toward = fav.toward(contributions)
    names = explanation.get("feature_names") or ctx.feature_names
    features = decision.get("features") or []
    row = None
    if ctx.ensemble is not None:
        row = ctx.ensemble.prepare(np.asarray([ctx.row(decision)], dtype=np.float64))[0]
    against = sorted(
        (j for j, c in enumerate(toward) if c < 0 and names[j] not in ctx.excluded),
        key=lambda j: (toward[j], j),
    )
    missing_text = []
    for rank, j in enumerate(against[: ctx.count], start=1):
        name = names[j]
        way = direction(ctx.ensemble, fav, row, j) if row is not None and ctx.ensemble else None
        text = ctx.catalogue.reason(name, way)
        if text.source != "catalogue":
            missing_text.append(f"{name} ({way or 'any direction'})")
        value = features[j] if j < len(features) else None
        body["reasons"].append(
            {
                "rank": rank,
                "feature": name,
                "label": ctx.catalogue.label(name),
                "value": None if value is None else shown(float(value), ctx.ensemble),
                "direction": way,
                "text": text.text,
                "text_source": text.source,
                # How far this feature pushed toward the unfavourable outcome (> 0), in
                # contribution_space.
                "contribution": -toward[j],
            }
        )
    if not body["reasons"]:
        body["note"] = "No feature that may be given as a reason pushed toward this outcome."
    elif missing_text:
        body["note"] = (
            "The reason catalogue has no text for "
            + ", ".join(missing_text)
            + ("; the feature's name is given instead.")
        )
    return body


def reasons_or_none(
    ctx: PeopleContext, decision: dict[str, Any], explanation: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The reasons for the lookup, or None where they cannot be given (the lookup says why
    it has no explanation; /reasons says why there are no reasons)."""
    if explanation is None or ctx.favourable_label is None:
        return None
    try:
        return principal_reasons(ctx, decision, usable(explanation, None))
    except Unanswerable:
        return None
