"""Which way is favourable is taken from the labels, never assumed from a sign."""

from __future__ import annotations

from typing import Any

import pytest

from explainers.recourse import Favourable
from sidecar.people.catalogue import Catalogue
from sidecar.people.context import PeopleContext
from sidecar.people.reasons import principal_reasons

NAMES = ["a", "b", "c", "d"]
PHI = [[0.5, -0.2, 0.1, -0.4]]  # toward the class the one output scores (the second label)


def _ctx(
    labels: list[str], favourable: str, exclude: frozenset[str] = frozenset()
) -> PeopleContext:
    return PeopleContext(
        feature_names=NAMES,
        class_labels=labels,
        favourable_label=favourable,
        excluded=exclude,
        count=3,
        catalogue=Catalogue(),
        actionable=[],
        max_options=3,
        max_pair_candidates=16,
        ensemble=None,
        reference=None,
        runtime=None,
    )


def _decision(prediction: Any) -> dict[str, Any]:
    return {"decision_id": "r/0", "prediction": prediction, "features": [1.0, 2.0, 3.0, None]}


def _explanation(phi: list[list[float]]) -> dict[str, Any]:
    return {"contributions": phi, "feature_names": NAMES, "output_space": "probability"}


def test_the_scored_class_is_the_favourable_one() -> None:
    # Scores "approve", which is favourable: negative contributions are the reasons.
    body = principal_reasons(
        _ctx(["deny", "approve"], "approve"), _decision("deny"), _explanation(PHI)
    )
    assert [r["feature"] for r in body["reasons"]] == ["d", "b"]
    assert [r["contribution"] for r in body["reasons"]] == [0.4, 0.2]
    assert body["contribution_space"] == "probability"


def test_the_scored_class_is_the_unfavourable_one() -> None:
    # Scores "deny" (the second label), unfavourable: positive contributions are the reasons.
    body = principal_reasons(_ctx(["approve", "deny"], "approve"), _decision(1), _explanation(PHI))
    assert body["outcome"] == "deny"
    assert [r["feature"] for r in body["reasons"]] == ["a", "c"]
    excluded = _ctx(["approve", "deny"], "approve", frozenset({"a"}))
    assert [
        r["feature"]
        for r in principal_reasons(excluded, _decision(1), _explanation(PHI))["reasons"]
    ] == ["c"]


def test_one_output_per_class_reads_the_favourable_column() -> None:
    phi = [[1.0, 1.0, 1.0, 1.0], [-0.1, 0.3, -0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    body = principal_reasons(_ctx(["x", "ok", "z"], "ok"), _decision("x"), _explanation(phi))
    assert [r["feature"] for r in body["reasons"]] == ["c", "a"]
    assert Favourable.of(3, ["x", "ok", "z"], "ok").output == 1


def test_outputs_that_name_no_class_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot tell"):
        Favourable.of(1, ["a", "b", "c"], "a")
    with pytest.raises(ValueError, match="not one of"):
        Favourable.of(1, ["a", "b"], "c")


def test_a_mismatched_explanation_is_never_given_as_the_reasons() -> None:
    from sidecar.people.context import Unanswerable
    from sidecar.people.reasons import reasons_or_none, usable

    mismatched = {**_explanation(PHI), "fidelity": "mismatch"}
    with pytest.raises(Unanswerable, match="fidelity mismatch") as err:
        usable(mismatched, None)
    assert err.value.status == 409
    assert reasons_or_none(_ctx(["approve", "deny"], "approve"), _decision(1), mismatched) is None
