"""Figures from the statistics: per-group rates with intervals, and disparities between groups.

Names follow Fairlearn's (`selection_rate`, `true_positive_rate`, ...,
`demographic_parity_difference`, `demographic_parity_ratio`,
`equalized_odds_difference`, `equal_opportunity_difference`), and an
attribute's disparity is computed as `fairlearn.metrics` computes it:
between the groups with the highest and lowest rate. The positive class is
the favourable label. A rate whose denominator is below `min_group_size` is
"insufficient": it has no value and takes no part in a disparity.

Each group also gets its own disparity against the best-placed group (its
selection rate over the highest one; the highest true positive rate minus its
own; its false positive rate minus the lowest), so an alert can name the group
that is behind rather than every group of the attribute; the attribute's
figure is the worst of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.monitor.intervals import katz_ratio, newcombe, wilson, z_for
from sidecar.monitor.state import (
    ALL,
    CAL0,
    CAL_BINS,
    DECIDED,
    EXPLAINED,
    FAV,
    FIX,
    FN,
    FP,
    OVERRIDDEN,
    ROUTED,
    SCORE_SUM,
    SCORED,
    SHAP0,
    TN,
    TP,
    TTD_N,
    TTD_SUM,
    Key,
    N,
)

# Rate name -> (numerator, denominator) over the counts.
RATES: dict[str, tuple[Any, Any]] = {
    "selection_rate": (lambda c: c[FAV], lambda c: c[N]),
    "true_positive_rate": (lambda c: c[TP], lambda c: c[TP] + c[FN]),
    "false_positive_rate": (lambda c: c[FP], lambda c: c[FP] + c[TN]),
    "accuracy": (lambda c: c[TP] + c[TN], lambda c: c[TP] + c[FP] + c[FN] + c[TN]),
    "precision": (lambda c: c[TP], lambda c: c[TP] + c[FP]),
    "review_rate": (lambda c: c[ROUTED], lambda c: c[N]),
    "override_rate": (lambda c: c[OVERRIDDEN], lambda c: c[DECIDED]),
}
DISPARITIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)
METHODS = {
    "rate": "wilson",
    "difference": "newcombe-hybrid-score",
    "ratio": "katz-log",
}


@dataclass(frozen=True)
class Options:
    min_group_size: int
    confidence: float
    feature_names: tuple[str, ...]

    @property
    def z(self) -> float:
        return z_for(self.confidence)


def _rate(k: float, n: float, opts: Options) -> dict[str, Any]:
    out: dict[str, Any] = {"value": None, "interval": None, "numerator": k, "denominator": n}
    if n <= 0:
        out["status"] = "undefined"
    elif n < opts.min_group_size:
        out["status"] = "insufficient"
    else:
        out["status"] = "ok"
        out["value"] = k / n
        ci = wilson(k, n, opts.z)
        out["interval"] = list(ci) if ci else None
    return out


def group_figures(c: list[float], opts: Options) -> dict[str, Any]:
    """Every per-group figure from one group's counts."""
    fig: dict[str, Any] = {"count": c[N]}
    for name, (num, den) in RATES.items():
        fig[name] = _rate(num(c), den(c), opts)
    fig["outcomes"] = c[TP] + c[FP] + c[FN] + c[TN]
    fig["mean_score"] = c[SCORE_SUM] / FIX / c[SCORED] if c[SCORED] else None
    fig["mean_time_to_decision_s"] = c[TTD_SUM] / FIX / c[TTD_N] if c[TTD_N] else None
    fig["reviews_decided"] = c[DECIDED]
    bins = []
    ece, total = 0.0, 0.0
    for b in range(CAL_BINS):
        n, s, pos = c[CAL0 + 3 * b], c[CAL0 + 3 * b + 1] / FIX, c[CAL0 + 3 * b + 2]
        if n > 0:
            bins.append(
                {
                    "bin": [b / CAL_BINS, (b + 1) / CAL_BINS],
                    "count": n,
                    "mean_score": s / n,
                    "observed_rate": pos / n,
                }
            )
            ece += n * abs(s / n - pos / n)
            total += n
    fig["calibration"] = {
        "bins": bins,
        # Expected calibration error: the count-weighted mean gap between score and outcome.
        "expected_calibration_error": ece / total if total >= opts.min_group_size else None,
    }
    fig["explained"] = c[EXPLAINED]
    fig["mean_abs_shap"] = (
        {f: c[SHAP0 + j] / FIX / c[EXPLAINED] for j, f in enumerate(opts.feature_names)}
        if c[EXPLAINED]
        else {}
    )
    return fig


def _value(fig: dict[str, Any], name: str) -> float | None:
    v = fig[name]["value"]
    return float(v) if v is not None else None


def _counts(fig: dict[str, Any], name: str) -> tuple[float, float]:
    return fig[name]["numerator"], fig[name]["denominator"]


def _extremes(figs: dict[str, dict[str, Any]], name: str) -> tuple[str, float, str, float] | None:
    have = sorted((g, v) for g, f in figs.items() if (v := _value(f, name)) is not None)
    if len(have) < 2:
        return None
    hi_g, hi = max(have, key=lambda gv: gv[1])
    lo_g, lo = min(have, key=lambda gv: gv[1])
    return hi_g, hi, lo_g, lo


def _difference(
    figs: dict[str, dict[str, Any]], name: str, a: str, b: str, opts: Options
) -> dict[str, Any]:
    """figs[a][name] - figs[b][name], with Newcombe's interval."""
    ka, na = _counts(figs[a], name)
    kb, nb = _counts(figs[b], name)
    ci = newcombe(ka, na, kb, nb, opts.z)
    return {
        "value": ka / na - kb / nb,
        "interval": list(ci) if ci else None,
        "groups": [a, b],
        "metric": name,
        "method": METHODS["difference"],
    }


def _ratio(
    figs: dict[str, dict[str, Any]], name: str, a: str, b: str, opts: Options
) -> dict[str, Any]:
    ka, na = _counts(figs[a], name)
    kb, nb = _counts(figs[b], name)
    ci = katz_ratio(ka, na, kb, nb, opts.z)
    value = (ka / na) / (kb / nb) if kb > 0 else None
    return {
        "value": value,
        "interval": list(ci) if ci else None,
        "groups": [a, b],
        "metric": name,
        "method": METHODS["ratio"],
    }


def _undefined(reason: str) -> dict[str, Any]:
    return {"value": None, "interval": None, "groups": [], "status": reason}


def disparities(figs: dict[str, dict[str, Any]], opts: Options) -> dict[str, Any]:
    """The attribute's disparities (Fairlearn's), and each group's against the best group."""
    out: dict[str, Any] = {}
    per_group: dict[str, dict[str, Any]] = {g: {} for g in figs}
    sel = _extremes(figs, "selection_rate")
    if sel is None:
        out["demographic_parity_difference"] = _undefined("fewer than two sufficient groups")
        out["demographic_parity_ratio"] = _undefined("fewer than two sufficient groups")
    else:
        hi_g, hi, lo_g, _ = sel
        out["demographic_parity_difference"] = _difference(figs, "selection_rate", hi_g, lo_g, opts)
        out["demographic_parity_ratio"] = (
            _ratio(figs, "selection_rate", lo_g, hi_g, opts)
            if hi > 0
            else _undefined("no group has a favourable prediction")
        )
        for g, f in figs.items():
            if _value(f, "selection_rate") is None:
                continue
            per_group[g]["demographic_parity_difference"] = _difference(
                figs, "selection_rate", hi_g, g, opts
            )
            if hi > 0:
                per_group[g]["demographic_parity_ratio"] = _ratio(
                    figs, "selection_rate", g, hi_g, opts
                )
    tpr = _extremes(figs, "true_positive_rate")
    fpr = _extremes(figs, "false_positive_rate")
    if tpr is None:
        out["equal_opportunity_difference"] = _undefined("fewer than two sufficient groups")
    else:
        out["equal_opportunity_difference"] = _difference(
            figs, "true_positive_rate", tpr[0], tpr[2], opts
        )
    if tpr is None or fpr is None:
        out["equalized_odds_difference"] = _undefined("fewer than two sufficient groups")
    else:
        t = _difference(figs, "true_positive_rate", tpr[0], tpr[2], opts)
        f = _difference(figs, "false_positive_rate", fpr[0], fpr[2], opts)
        out["equalized_odds_difference"] = t if t["value"] >= f["value"] else f
    for g, f_ in figs.items():
        gaps = []
        if tpr is not None and _value(f_, "true_positive_rate") is not None:
            t = _difference(figs, "true_positive_rate", tpr[0], g, opts)
            per_group[g]["equal_opportunity_difference"] = t
            gaps.append(t)
        if fpr is not None and _value(f_, "false_positive_rate") is not None:
            gaps.append(_difference(figs, "false_positive_rate", g, fpr[2], opts))
        if len(gaps) == 2:
            per_group[g]["equalized_odds_difference"] = max(gaps, key=lambda d: d["value"])
    out["by_group"] = per_group
    return out


def scope_figures(groups: dict[Key, list[float]], opts: Options) -> dict[str, Any]:
    """Figures of one scope (a window, or the whole period): overall and per attribute."""
    overall = groups.get(ALL)
    by_dim: dict[str, dict[str, dict[str, Any]]] = {}
    for (dim, g), c in groups.items():
        if (dim, g) != ALL:
            by_dim.setdefault(dim, {})[g] = group_figures(c, opts)
    attributes = {}
    for dim in sorted(by_dim):
        figs = dict(sorted(by_dim[dim].items()))
        attributes[dim] = {"groups": figs, "disparities": disparities(figs, opts)}
    return {
        "overall": group_figures(overall, opts) if overall is not None else None,
        "attributes": attributes,
    }
