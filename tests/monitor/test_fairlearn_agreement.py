"""Every fairness and performance figure of the report equals fairlearn.metrics on the same rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score

from sidecar.monitor.ingest import verdict
from tests.monitor.gen import FEATURES, Generated, generate, isclose
from tests.monitor.helpers import report, settings

TOL = 1e-9


@pytest.fixture(scope="module")
def data() -> Generated:
    return generate(6000, seed=11, shift=0.25)


@pytest.fixture(scope="module")
def rep(data: Generated) -> dict[str, Any]:
    return report(data.events, settings(intersections=[["gender", "age_band"]]))


def _sensitive(data: Generated, dim: str, mask: np.ndarray) -> pd.Series | pd.DataFrame:
    if dim == "gender&age_band":
        return pd.DataFrame({"gender": data.gender[mask], "age_band": data.age_band[mask]})
    return pd.Series(getattr(data, dim)[mask], name=dim)


def _group_name(key: Any) -> str:
    return "&".join(key) if isinstance(key, tuple) else str(key)


@pytest.mark.parametrize("dim", ["gender", "age_band", "gender&age_band"])
def test_selection_rate_and_demographic_parity(
    data: Generated, rep: dict[str, Any], dim: str
) -> None:
    everyone = np.ones(len(data.y_pred), dtype=bool)
    sf = _sensitive(data, dim, everyone)
    y = data.y_pred
    mf = MetricFrame(
        metrics={"selection_rate": selection_rate}, y_true=y, y_pred=y, sensitive_features=sf
    )
    attr = rep["cumulative"]["attributes"][dim]
    for key, row in mf.by_group.iterrows():
        fig = attr["groups"][_group_name(key)]
        assert isclose(fig["selection_rate"]["value"], row["selection_rate"], TOL)
        lo, hi = fig["selection_rate"]["interval"]
        assert lo < fig["selection_rate"]["value"] < hi
    d = attr["disparities"]
    assert isclose(
        d["demographic_parity_difference"]["value"],
        demographic_parity_difference(y, y, sensitive_features=sf),
        TOL,
    )
    assert isclose(
        d["demographic_parity_ratio"]["value"],
        demographic_parity_ratio(y, y, sensitive_features=sf),
        TOL,
    )
    overall = rep["cumulative"]["overall"]
    assert isclose(overall["selection_rate"]["value"], selection_rate(y, y), TOL)


@pytest.mark.parametrize("dim", ["gender", "age_band", "gender&age_band"])
def test_error_rates_with_late_outcomes(data: Generated, rep: dict[str, Any], dim: str) -> None:
    known = data.y_true >= 0
    sf = _sensitive(data, dim, known)
    yt, yp = data.y_true[known], data.y_pred[known]
    metrics = {
        "true_positive_rate": true_positive_rate,
        "false_positive_rate": false_positive_rate,
        "accuracy": accuracy_score,
        "precision": precision_score,
    }
    mf = MetricFrame(metrics=metrics, y_true=yt, y_pred=yp, sensitive_features=sf)
    attr = rep["cumulative"]["attributes"][dim]
    for key, row in mf.by_group.iterrows():
        fig = attr["groups"][_group_name(key)]
        for name in metrics:
            assert isclose(fig[name]["value"], row[name], TOL), (key, name)
    d = attr["disparities"]
    assert isclose(
        d["equalized_odds_difference"]["value"],
        equalized_odds_difference(yt, yp, sensitive_features=sf),
        TOL,
    )
    assert isclose(
        d["equal_opportunity_difference"]["value"],
        equal_opportunity_difference(yt, yp, sensitive_features=sf),
        TOL,
    )


def test_each_window_agrees_too(data: Generated, rep: dict[str, Any]) -> None:
    assert len(rep["windows"]) == 3
    for day, window in enumerate(rep["windows"]):
        mask = (data.day == day) & (data.y_true >= 0)
        sf = pd.Series(data.gender[mask])
        yt, yp = data.y_true[mask], data.y_pred[mask]
        d = window["attributes"]["gender"]["disparities"]
        assert isclose(
            d["equalized_odds_difference"]["value"],
            equalized_odds_difference(yt, yp, sensitive_features=sf),
            TOL,
        )
        everyone = data.day == day
        y = data.y_pred[everyone]
        assert isclose(
            d["demographic_parity_ratio"]["value"],
            demographic_parity_ratio(y, y, sensitive_features=data.gender[everyone]),
            TOL,
        )


def test_review_and_attribution_per_group(data: Generated, rep: dict[str, Any]) -> None:
    for g in ("A", "B", "C"):
        fig = rep["cumulative"]["attributes"]["gender"]["groups"][g]
        mask = data.gender == g
        assert fig["review_rate"]["numerator"] == int(data.routed[mask].sum())
        decided = data.overridden[mask]
        assert isclose(
            fig["override_rate"]["value"], float((decided == 1).sum() / (decided >= 0).sum()), TOL
        )
        assert isclose(fig["mean_time_to_decision_s"], 60.0, 1e-6)
        shap = data.shap[mask]
        for j, f in enumerate(FEATURES):
            assert isclose(fig["mean_abs_shap"][f], float(np.nanmean(shap[:, j])), TOL)


def test_the_shifted_group_is_the_one_behind(rep: dict[str, Any]) -> None:
    d = rep["cumulative"]["attributes"]["gender"]["disparities"]
    assert d["demographic_parity_ratio"]["groups"][0] == "C"
    per = d["by_group"]
    assert per["C"]["demographic_parity_ratio"]["interval"][1] < 0.8
    for g in ("A", "B"):
        assert per[g]["demographic_parity_ratio"]["value"] > 0.9


def test_a_small_group_is_insufficient_not_computed() -> None:
    data = generate(300, seed=3)
    rep = report(data.events, settings(min_group_size=1000))
    fig = rep["cumulative"]["attributes"]["gender"]["groups"]["A"]
    assert fig["selection_rate"]["status"] == "insufficient"
    assert fig["selection_rate"]["value"] is None
    assert (
        rep["cumulative"]["attributes"]["gender"]["disparities"]["demographic_parity_ratio"][
            "value"
        ]
        is None
    )


def test_a_verdict_is_read_from_the_field_or_from_an_older_sidecars_reason() -> None:
    assert verdict({"verdict": "override", "reason": "approve: x"}) == "override"
    assert verdict({"reason": "override: income verified", "outcome": "repaid"}) == "override"
    assert verdict({"reason": "approve: fine", "outcome": "override"}) == "approve"
    # The final answer is never taken for the verdict, whatever its value.
    assert verdict({"reason": "checked", "outcome": "override"}) is None
