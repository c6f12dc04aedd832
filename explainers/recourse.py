"""Recourse on a tree ensemble: which changes to a row would turn its outcome favourable.

A tree ensemble is piecewise constant along each feature: between two adjacent
split thresholds of feature j every value gives the same output. So the values
worth trying for one feature are one per interval, the one nearest the row's
value: just past a threshold when moving up (the smallest input-dtype value
above it), the threshold itself when moving down (rows go left iff
``x <= threshold``). Trying all of them is an exact search for one feature;
for two, the grid of both features' candidates is searched, capped by keeping
the candidates nearest the row's values.

The same intervals tell a reason's direction: whether a lower or a higher value
of the feature alone would score better for this row (its individual
conditional expectation, read at one point per interval).

Every option found on the parsed ensemble is confirmed on the model's own
runtime (a `Reference`) before it is offered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np
import numpy.typing as npt

from explainers.ensemble import FloatArray, TreeEnsemble
from explainers.fidelity import margins
from explainers.reference import Reference

Direction = Literal["up", "down"]
Allowed = Literal["up", "down", "both"]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Favourable:
    """Which outcome is favourable, in terms of the ensemble's outputs.

    One output (a binary classifier): it scores the positive class, the second of
    the class labels; ``positive`` says whether that class is the favourable one.
    One output per class: ``output`` is the favourable class's column.
    """

    output: int
    positive: bool
    n_outputs: int

    @classmethod
    def of(cls, n_outputs: int, class_labels: Sequence[str], label: str) -> Favourable:
        """From the class labels (in probability order) and the favourable label; ValueError when
        the model's outputs do not name classes (a regression, or labels that do not fit)."""
        labels = list(class_labels)
        if label not in labels:
            raise ValueError(f"the favourable label {label!r} is not one of {labels}")
        k = labels.index(label)
        if n_outputs == 1 and len(labels) == 2:
            return cls(output=0, positive=k == 1, n_outputs=1)
        if n_outputs == len(labels) and n_outputs > 1:
            return cls(output=k, positive=True, n_outputs=n_outputs)
        raise ValueError(
            f"the model has {n_outputs} output(s) and {len(labels)} class labels: "
            "cannot tell which output is the favourable class"
        )

    def toward(self, contributions: Sequence[Sequence[float]]) -> list[float]:
        """Each feature's contribution toward the favourable outcome (negative: toward the
        unfavourable one), from contributions given per output."""
        row = contributions[self.output]
        sign = 1.0 if self.positive else -1.0
        return [sign * float(c) for c in row]

    def score(self, ens: TreeEnsemble, margin: FloatArray) -> FloatArray:
        """The probability of the favourable outcome for each row's margins."""
        p = ens.apply_transform(margin)
        if self.n_outputs == 1:
            col: FloatArray = p[:, 0]
            return col if self.positive else 1.0 - col
        fav: FloatArray = p[:, self.output]
        return fav

    def holds(self, ens: TreeEnsemble, margin: FloatArray) -> BoolArray:
        """Whether each row's predicted class is the favourable one (argmax; 0.5 for one output)."""
        if self.n_outputs == 1:
            positive = ens.apply_transform(margin)[:, 0] > 0.5
            out: BoolArray = positive if self.positive else ~positive
            return out
        best: BoolArray = margin.argmax(axis=1) == self.output
        return best


def reference_margins(reference: Reference, X: FloatArray, n_outputs: int) -> FloatArray:
    """The runtime's margins in the ensemble's layout (onnxruntime's binary case writes
    [-score, score] where the ensemble has one output)."""
    theirs = np.asarray(reference(X), dtype=np.float64)
    if theirs.shape[1] == 2 and n_outputs == 1:
        theirs = theirs[:, 1:]
    return theirs


def thresholds(ens: TreeEnsemble, j: int) -> FloatArray:
    """Feature j's distinct finite split thresholds, ascending."""
    t = ens.threshold[(ens.left >= 0) & (ens.feature == j)]
    out: FloatArray = np.unique(t[np.isfinite(t)])
    return out


def _above(t: FloatArray, dtype: type[np.floating]) -> FloatArray:  # type: ignore[type-arg]
    """The smallest value of ``dtype`` strictly above each threshold."""
    v = t.astype(dtype)
    v = np.where(v.astype(np.float64) <= t, np.nextafter(v, dtype(np.inf)), v)
    out: FloatArray = v.astype(np.float64)
    return out


def _at_or_below(t: FloatArray, dtype: type[np.floating]) -> FloatArray:  # type: ignore[type-arg]
    """The largest value of ``dtype`` at or below each threshold."""
    v = t.astype(dtype)
    v = np.where(v.astype(np.float64) > t, np.nextafter(v, dtype(-np.inf)), v)
    out: FloatArray = v.astype(np.float64)
    return out


def interval_points(ens: TreeEnsemble, j: int) -> FloatArray:
    """One value in each interval feature j's thresholds cut the line into."""
    t = thresholds(ens, j)
    if t.size == 0:
        return np.zeros(0)
    pts = np.concatenate([_at_or_below(t, ens.input_dtype), _above(t[-1:], ens.input_dtype)])
    out: FloatArray = np.unique(pts)
    return out


def direction(ens: TreeEnsemble, fav: Favourable, row: FloatArray, j: int) -> Direction | None:
    """Which way feature j's value hurts this row: "up" when a lower value alone would score
    better (the value is too high), "down" when a higher one would, None when no value of
    this feature alone scores better (its contribution comes through other features)."""
    x = float(row[j])
    if math.isnan(x):
        return None
    pts = interval_points(ens, j)
    if pts.size == 0:
        return None
    X = np.repeat(row[None, :], pts.size + 1, axis=0)
    X[1:, j] = pts
    s = fav.score(ens, margins(ens, X))
    now, scores = float(s[0]), s[1:]
    below = scores[pts < x]
    above = scores[pts > x]
    best_below = float(below.max()) if below.size else -math.inf
    best_above = float(above.max()) if above.size else -math.inf
    if best_below > now and best_below >= best_above:
        return "up"
    if best_above > now:
        return "down"
    return None


@dataclass(frozen=True, slots=True)
class Actionable:
    """A feature recourse may change: which way, within which bounds, on which grid."""

    feature: int
    allowed: Allowed
    low: float = -math.inf
    high: float = math.inf
    step: float = 0.0


@dataclass(frozen=True, slots=True)
class Option:
    """A change that turns the row favourable: new values by feature index."""

    changes: dict[int, float]
    cost: float  # sum of |change| / the feature's threshold span: comparable across features
    score: float  # favourable probability on the model's own runtime
    confirmed: bool  # the model's runtime agrees the outcome is favourable


def candidates(ens: TreeEnsemble, row: FloatArray, a: Actionable) -> FloatArray:
    """The values to try for one feature: nearest value of each interval in the allowed
    direction(s), rounded to the step away from the row's value, within the bounds."""
    x = float(row[a.feature])
    if math.isnan(x):
        return np.zeros(0)
    t = thresholds(ens, a.feature)
    parts: list[FloatArray] = []
    if a.allowed in ("up", "both"):
        up = _above(t[t >= x], ens.input_dtype)
        if a.step > 0:
            up = np.ceil(up / a.step) * a.step
        parts.append(up[up > x])
    if a.allowed in ("down", "both"):
        down = _at_or_below(t[t < x], ens.input_dtype)
        if a.step > 0:
            down = np.floor(down / a.step) * a.step
        parts.append(down[down < x])
    if not parts:
        return np.zeros(0)
    v = np.unique(np.concatenate(parts))
    v = v[(v >= a.low) & (v <= a.high)]
    # Rounded to the input dtype, as the runtime will read them; nearest first.
    v = np.unique(v.astype(ens.input_dtype).astype(np.float64))
    v = v[v != x]
    out: FloatArray = v[np.argsort(np.abs(v - x), kind="stable")]
    return out


def _span(ens: TreeEnsemble, j: int) -> float:
    t = thresholds(ens, j)
    span = float(t[-1] - t[0]) if t.size > 1 else 0.0
    return span if span > 0 else 1.0


@dataclass(frozen=True, slots=True)
class Search:
    """What a search did: the options, and how many rows it scored."""

    options: list[Option]
    scored: int
    pairs_capped: bool


def search(
    ens: TreeEnsemble,
    fav: Favourable,
    row: Sequence[float] | FloatArray,
    actionable: Sequence[Actionable],
    *,
    max_options: int,
    max_pair_candidates: int,
    reference: Reference | None,
) -> Search:
    """Up to ``max_options`` changes, single features first, then pairs of features none of
    which flips the outcome alone; each the smallest change found (by cost) for its features.
    Each is re-scored with ``reference`` (the model's own runtime) when given; an option the
    runtime does not confirm is dropped."""
    x = ens.prepare(np.asarray(row, dtype=np.float64))[0]
    cands = {a.feature: candidates(ens, x, a) for a in actionable}
    spans = {a.feature: _span(ens, a.feature) for a in actionable}
    found: list[tuple[dict[int, float], float]] = []
    scored = 0
    alone: set[int] = set()
    for a in actionable:
        c = cands[a.feature]
        if c.size == 0:
            continue
        X = np.repeat(x[None, :], c.size, axis=0)
        X[:, a.feature] = c
        ok = fav.holds(ens, margins(ens, X))
        scored += c.size
        if ok.any():
            v = float(c[int(np.argmax(ok))])  # nearest first: the first that flips
            found.append(({a.feature: v}, abs(v - float(x[a.feature])) / spans[a.feature]))
            alone.add(a.feature)
    found.sort(key=lambda f: f[1])
    capped = False
    pairs: list[tuple[dict[int, float], float]] = []
    if len(found) < max_options:
        rest = [a.feature for a in actionable if a.feature not in alone and cands[a.feature].size]
        for i, k in combinations(rest, 2):
            ci, ck = cands[i], cands[k]
            if ci.size * ck.size > max_pair_candidates:
                capped = True
                ci = ci[: max(1, math.isqrt(max_pair_candidates))]
                ck = ck[: max(1, max_pair_candidates // ci.size)]
            gi, gk = np.meshgrid(ci, ck, indexing="ij")
            X = np.repeat(x[None, :], gi.size, axis=0)
            X[:, i] = gi.ravel()
            X[:, k] = gk.ravel()
            ok = fav.holds(ens, margins(ens, X))
            scored += gi.size
            if not ok.any():
                continue
            cost = np.abs(gi.ravel() - x[i]) / spans[i] + np.abs(gk.ravel() - x[k]) / spans[k]
            cost[~ok] = np.inf
            b = int(np.argmin(cost))
            pairs.append(({i: float(gi.ravel()[b]), k: float(gk.ravel()[b])}, float(cost[b])))
        pairs.sort(key=lambda f: f[1])
    chosen = (found + pairs)[:max_options]
    return Search(_confirm(ens, fav, x, chosen, reference), scored, capped)


def _confirm(
    ens: TreeEnsemble,
    fav: Favourable,
    x: FloatArray,
    chosen: list[tuple[dict[int, float], float]],
    reference: Reference | None,
) -> list[Option]:
    if not chosen:
        return []
    X = np.repeat(x[None, :], len(chosen), axis=0)
    for r, (changes, _) in enumerate(chosen):
        for j, v in changes.items():
            X[r, j] = v
    m = margins(ens, X) if reference is None else reference_margins(reference, X, ens.n_outputs)
    ok = fav.holds(ens, m)
    score = fav.score(ens, m)
    return [
        Option(changes=changes, cost=cost, score=float(score[r]), confirmed=reference is not None)
        for r, (changes, cost) in enumerate(chosen)
        if ok[r]
    ]


__all__ = [
    "Actionable",
    "Favourable",
    "Option",
    "Search",
    "candidates",
    "direction",
    "interval_points",
    "reference_margins",
    "search",
    "thresholds",
]
