"""Drift against a reference: PSI and KS per feature and for the score, and attribution drift.

Bins are fixed before any event is read (quantiles of the reference rows, or an
earlier report's edges), so histograms of different windows and instances add up.

- PSI = sum over bins of (p - q) * ln(p / q), with p and q the reference's and the
  window's shares of each bin plus 1e-5, so an empty bin stays finite: popmon's
  convention (`popmon.analysis.comparison.comparisons.population_stability_index`).
  With `monitor.psi_convention = "evidently"`, Evidently's instead: the bins either
  side uses, an empty one's share replaced (see `_filled`).
- KS is the largest gap between the two cumulative shares at the bin edges: the
  two-sample Kolmogorov-Smirnov statistic of the binned values (equal to the exact
  one when values fall on the bin grid; a lower bound otherwise).
- Attribution drift: the `k` features with the largest mean |SHAP| against the
  reference's `k`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sidecar.monitor.state import EXPLAINED, FIX, SHAP0, Window

PSI_EPSILON = 1e-5


@dataclass
class Reference:
    """What windows are compared with; `hist` etc. are None where the reference lacks them."""

    source: str
    feature_names: list[str]
    edges: list[list[float]]
    hist: list[list[int]] | None = None
    score_hist: list[int] | None = None
    importance: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "feature_names": self.feature_names,
            "edges": self.edges,
            "hist": self.hist,
            "score_hist": self.score_hist,
            "importance": self.importance,
        }


def quantile_edges(values: list[float], bins: int) -> list[float]:
    """Inner bin edges at the reference's quantiles (duplicates merged)."""
    import numpy as np

    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return []
    qs = np.quantile(arr, [i / bins for i in range(1, bins)])
    return sorted({float(q) for q in qs})


def histogram(values: list[float | None], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) + 1)
    for v in values:
        if v is not None and not math.isnan(v):
            counts[bisect.bisect_right(edges, v)] += 1
    return counts


def load_reference(path: Path, feature_names: list[str], bins: int) -> Reference:
    """An earlier report's JSON (its `reference` block), or Parquet/CSV rows of features."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        body = orjson.loads(path.read_bytes())
        ref = body.get("reference") if isinstance(body, dict) else None
        if not isinstance(ref, dict) or "edges" not in ref:
            raise ValueError(f"{path} is not a monitor report (no reference block)")
        return Reference(
            source=str(path),
            feature_names=list(ref["feature_names"]),
            edges=[list(e) for e in ref["edges"]],
            hist=ref.get("hist"),
            score_hist=ref.get("score_hist"),
            importance=ref.get("importance"),
        )
    import pyarrow.compute as pc

    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
    else:
        raise ValueError(f"{path}: a reference is a report .json, .parquet or .csv")
    names = feature_names or [
        f.name for f in table.schema if str(f.type).startswith(("double", "float", "int"))
    ]
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks the feature columns {', '.join(missing)}")
    edges, hist = [], []
    for name in names:
        col = pc.cast(table.column(name), "float64").to_pylist()
        e = quantile_edges(col, bins)
        edges.append(e)
        hist.append(histogram(col, e))
    return Reference(source=str(path), feature_names=names, edges=edges, hist=hist)


def _filled(shares: list[float]) -> list[float]:
    # Evidently's: an empty bin's share becomes 1e-4, or the smallest share / 10^6 when that
    # is at most 1e-4 (evidently.legacy.calculations.stattests.utils.get_binned_data).
    least = min(x for x in shares if x > 0)
    fill = least / 10**6 if least <= 0.0001 else 0.0001
    return [x if x > 0 else fill for x in shares]


def psi(reference: list[int], current: list[int], convention: str = "popmon") -> float | None:
    """Σ (p - q) ln(p / q) over the bins' shares; `convention` says how an empty bin stays finite."""
    rt, ct = sum(reference), sum(current)
    if rt == 0 or ct == 0:
        return None
    total = 0.0
    if convention == "evidently":
        # Only bins that either side uses, as Evidently's categories are the values seen.
        used = [(r, c) for r, c in zip(reference, current, strict=True) if r or c]
        ps = _filled([r / rt for r, _ in used])
        qs = _filled([c / ct for _, c in used])
        for p, q in zip(ps, qs, strict=True):
            total += (p - q) * math.log(p / q)
        return total
    for r, c in zip(reference, current, strict=True):
        p, q = r / rt + PSI_EPSILON, c / ct + PSI_EPSILON
        total += (p - q) * math.log(p / q)
    return total


def ks(reference: list[int], current: list[int]) -> float | None:
    rt, ct = sum(reference), sum(current)
    if rt == 0 or ct == 0:
        return None
    gap, cr, cc = 0.0, 0, 0
    for r, c in zip(reference, current, strict=True):
        cr += r
        cc += c
        gap = max(gap, abs(cr / rt - cc / ct))
    return gap


def importance(window: Window, feature_names: list[str], key: Any) -> dict[str, float]:
    c = window.groups.get(key)
    if c is None or not c[EXPLAINED]:
        return {}
    return {f: c[SHAP0 + j] / FIX / c[EXPLAINED] for j, f in enumerate(feature_names)}


def top(imp: dict[str, float], k: int) -> list[str]:
    return [f for f, _ in sorted(imp.items(), key=lambda fv: (-fv[1], fv[0]))[:k]]


def drift_figures(
    window: Window,
    *,
    feature_names: list[str],
    ref_hist: list[list[int]] | None,
    ref_score: list[int] | None,
    ref_importance: dict[str, float] | None,
    current_importance: dict[str, float],
    k: int,
    psi_convention: str = "popmon",
) -> dict[str, Any]:
    features: dict[str, Any] = {}
    if ref_hist is not None and window.hist:
        for j, name in enumerate(feature_names):
            features[name] = {
                "psi": psi(ref_hist[j], window.hist[j], psi_convention),
                "ks": ks(ref_hist[j], window.hist[j]),
                "count": sum(window.hist[j]),
                "missing": window.missing[j],
            }
    prediction = None
    if ref_score is not None:
        prediction = {
            "psi": psi(ref_score, window.score_hist, psi_convention),
            "ks": ks(ref_score, window.score_hist),
        }
    attribution = None
    if ref_importance and current_importance:
        ref_top, cur_top = top(ref_importance, k), top(current_importance, k)
        attribution = {
            "k": k,
            "reference_top": ref_top,
            "top": cur_top,
            "changed": set(ref_top) != set(cur_top),
            "entered": [f for f in cur_top if f not in ref_top],
            "left": [f for f in ref_top if f not in cur_top],
        }
    return {"features": features, "prediction": prediction, "attribution": attribution}
