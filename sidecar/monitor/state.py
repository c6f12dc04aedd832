"""Mergeable sufficient statistics: per event-time window, per (attribute, group).

Everything here is a count or a sum, so two partial states (two monitor
instances, two partitions, two periods) merge by adding them element by
element, and every figure of the report is computed from the merged sums:
the figures of several instances equal those of one over the same events.

Per group, one flat list of numbers (cheaper to update per event than an
object with attributes), laid out by the constants below; the confusion
matrix takes the favourable label as the positive class, as fairness
metrics do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# (dimension, group): ("*", "*") is every decision; ("gender", "F"); ("gender&age_band", "F&30-39").
Key = tuple[str, str]
ALL: Key = ("*", "*")

(
    N,  # decisions
    FAV,  # favourable predictions
    SCORED,  # decisions with a favourable-class probability
    SCORE_SUM,
    TP,  # predicted favourable, outcome favourable
    FP,
    FN,
    TN,
    ROUTED,  # sent to human review
    DECIDED,  # review decided
    OVERRIDDEN,  # review decided against the model
    TTD_SUM,  # seconds from review requested to decided
    TTD_N,
    EXPLAINED,  # explanations joined (denominator of mean |SHAP|)
) = range(14)
CAL_BINS = 10
CAL0 = 14  # calibration: per score bin, (decisions with outcome, score sum, favourable outcomes)
SHAP0 = CAL0 + 3 * CAL_BINS  # then one sum of |contribution| per feature
SCORE_EDGES = [i / CAL_BINS for i in range(1, CAL_BINS)]
# Sums of real values (scores, |SHAP|, seconds) are kept as integers in units of 2**-60:
# integer addition does not depend on order, so instances that read the same events in
# another order, or in parts, merge to exactly the same sums (float sums differ in the
# last bits). Values below 2**-60 are lost, far below any figure's precision.
FIX = float(1 << 60)


def new_counts(n_features: int) -> list[float]:
    return [0] * (SHAP0 + n_features)


def _add(into: list[float], other: list[float]) -> None:
    for i, v in enumerate(other):
        into[i] += v


@dataclass
class Window:
    """One tumbling window's statistics."""

    groups: dict[Key, list[float]] = field(default_factory=dict)
    # Per feature, counts per bin of the reference's edges; values that were missing.
    hist: list[list[int]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    score_hist: list[int] = field(default_factory=lambda: [0] * CAL_BINS)

    def merge(self, other: Window) -> None:
        for key, counts in other.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = list(counts)
            else:
                _add(mine, counts)
        if not self.hist:
            self.hist = [list(h) for h in other.hist]
            self.missing = list(other.missing)
        elif other.hist:
            for mine_h, h in zip(self.hist, other.hist, strict=True):
                _add(mine_h, h)  # type: ignore[arg-type]
            _add(self.missing, other.missing)  # type: ignore[arg-type]
        _add(self.score_hist, other.score_hist)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [[d, g, c] for (d, g), c in self.groups.items()],
            "hist": self.hist,
            "missing": self.missing,
            "score_hist": self.score_hist,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Window:
        return cls(
            groups={(dim, g): list(c) for dim, g, c in d["groups"]},
            hist=[list(h) for h in d["hist"]],
            missing=list(d["missing"]),
            score_hist=list(d["score_hist"]),
        )


TRAFFIC_KEYS = (
    "decisions",
    "duplicates",
    "unjudged",  # no favourable label or prediction the monitor could read
    "schema_mismatch",  # feature names other than the monitored ones (left out of drift)
    "explanations",
    "reviews",
    "outcomes",
    "outcomes_replaced",  # a later outcome for a decision replaced an earlier one
    "invalid",  # unreadable lines or events without the fields they need
    "gap_records",
    "gap_decisions",  # decisions known to be missing from the stream
    "forgotten",  # decisions dropped from the join index (max_tracked_decisions)
)


@dataclass
class State:
    """The statistics of everything one monitor (or one shard of one) has read."""

    feature_names: list[str]
    edges: list[list[float]]
    windows: dict[int, Window] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRAFFIC_KEYS, 0))
    gap_reasons: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)  # "name@version" -> decisions
    decision_rules: dict[str, int] = field(default_factory=dict)  # rule kind -> decisions
    first_time: float | None = None
    last_time: float | None = None
    # Left unjoined: events whose decision this state has not seen (yet).
    pending: dict[str, int] = field(
        default_factory=lambda: {"outcomes": 0, "reviews": 0, "explanations": 0}
    )

    def window(self, start: int) -> Window:
        w = self.windows.get(start)
        if w is None:
            w = self.windows[start] = Window(
                hist=[[0] * (len(e) + 1) for e in self.edges], missing=[0] * len(self.edges)
            )
        return w

    def cumulative(self) -> Window:
        total = Window(hist=[[0] * (len(e) + 1) for e in self.edges], missing=[0] * len(self.edges))
        for start in sorted(self.windows):
            total.merge(self.windows[start])
        return total

    def merge(self, other: State) -> None:
        if other.feature_names != self.feature_names or other.edges != self.edges:
            # A state that has seen no decision yet has no names of its own to disagree with.
            if not self.windows and not self.feature_names:
                self.feature_names, self.edges = list(other.feature_names), list(other.edges)
            elif other.windows or other.feature_names:
                raise ValueError("cannot merge states over different features or bin edges")
        for start, w in other.windows.items():
            self.window(start).merge(w)
        for table, theirs in (
            (self.traffic, other.traffic),
            (self.gap_reasons, other.gap_reasons),
            (self.models, other.models),
            (self.decision_rules, other.decision_rules),
            (self.pending, other.pending),
        ):
            for k, v in theirs.items():
                table[k] = table.get(k, 0) + v
        times = [t for t in (self.first_time, other.first_time) if t is not None]
        self.first_time = min(times) if times else None
        times = [t for t in (self.last_time, other.last_time) if t is not None]
        self.last_time = max(times) if times else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_version": 1,
            "feature_names": self.feature_names,
            "edges": self.edges,
            "windows": {str(k): w.to_dict() for k, w in sorted(self.windows.items())},
            "traffic": self.traffic,
            "gap_reasons": self.gap_reasons,
            "models": self.models,
            "decision_rules": self.decision_rules,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> State:
        if d.get("state_version") != 1:
            raise ValueError(f"unknown monitor state version {d.get('state_version')!r}")
        return cls(
            feature_names=list(d["feature_names"]),
            edges=[list(e) for e in d["edges"]],
            windows={int(k): Window.from_dict(w) for k, w in d["windows"].items()},
            traffic={**dict.fromkeys(TRAFFIC_KEYS, 0), **d["traffic"]},
            gap_reasons=dict(d["gap_reasons"]),
            models=dict(d["models"]),
            decision_rules=dict(d.get("decision_rules", {})),
            first_time=d["first_time"],
            last_time=d["last_time"],
            pending=dict(d["pending"]),
        )
