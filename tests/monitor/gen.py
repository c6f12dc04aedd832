"""Generated events with known disparities, and the same rows as a table for the reference libraries.

Three groups of `gender` (A, B, C) and two of `age_band`; group C's scores are
lowered by `shift`, so its selection rate and true positive rate fall by a known
amount while A and B stay alike. Outcomes are drawn from the unshifted score and
arrive late: after every decision, weeks after the decision's time, a few of them
before their decision (the join must wait).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sidecar.sinks.events import ReviewAction, Verdict, event_id, review_event, rfc3339

LABELS = ["default", "repaid"]
FAVOURABLE = "repaid"
FEATURES = ["income", "debt_ratio", "zip_risk"]
T0 = 1_795_392_000.0  # 2026-11-23T00:00:00Z
DAY = 86_400


@dataclass
class Generated:
    events: list[dict[str, Any]]
    gender: np.ndarray
    age_band: np.ndarray
    y_pred: np.ndarray  # 1 = favourable predicted
    y_true: np.ndarray  # 1 = favourable outcome (-1: no outcome)
    score: np.ndarray
    features: np.ndarray
    day: np.ndarray
    routed: np.ndarray
    overridden: np.ndarray  # 1 overridden, 0 approved, -1 not decided
    shap: np.ndarray  # |contribution| per feature, NaN where not explained


def generate(
    n: int = 6000,
    *,
    seed: int = 7,
    shift: float = 0.25,
    days: int = 3,
    outcome_share: float = 0.8,
    feature_shift_day: int | None = None,
    shap_swap_day: int | None = None,
) -> Generated:
    rng = np.random.default_rng(seed)
    gender = rng.choice(np.array(["A", "B", "C"]), size=n)
    age_band = rng.choice(np.array(["18-39", "40+"]), size=n)
    day = np.sort(rng.integers(0, days, size=n))
    income = rng.normal(50.0, 12.0, size=n)
    debt = rng.uniform(0.0, 1.0, size=n)
    zip_risk = rng.normal(0.0, 1.0, size=n)
    if feature_shift_day is not None:
        income = np.where(day >= feature_shift_day, income + 15.0, income)
    logit = (income - 50.0) / 10.0 - 2.0 * (debt - 0.5) + 0.3 * zip_risk + 0.3
    base = 1.0 / (1.0 + np.exp(-logit))
    score = np.where(gender == "C", np.clip(base - shift, 0.001, 0.999), base)
    score = np.round(score, 6)
    y_pred = (score >= 0.5).astype(int)
    has_outcome = rng.uniform(size=n) < outcome_share
    truth = (rng.uniform(size=n) < base).astype(int)
    y_true = np.where(has_outcome, truth, -1)
    routed = (np.abs(score - 0.5) < 0.1).astype(int)
    overridden = np.where(routed == 1, (rng.uniform(size=n) < 0.3).astype(int), -1)
    explained = rng.uniform(size=n) < 0.5
    contrib = np.stack([(income - 50.0) / 10.0, -2.0 * (debt - 0.5), 0.3 * zip_risk], axis=1)
    if shap_swap_day is not None:
        # From that day the model leans on zip_risk: the top feature changes.
        contrib[:, 2] = np.where(day >= shap_swap_day, contrib[:, 2] * 20.0, contrib[:, 2])
    shap = np.where(explained[:, None], np.abs(contrib), np.nan)
    features = np.stack([np.round(income, 3), np.round(debt, 4), np.round(zip_risk, 4)], axis=1)

    events: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    early: list[dict[str, Any]] = []
    for i in range(n):
        did = f"call{i:07d}/0"
        t = T0 + int(day[i]) * DAY + (i % 3600) * 10.0
        events.append(
            {
                "event_type": "decision",
                "schema_version": 1,
                "event_id": event_id(did, "decision"),
                "decision_id": did,
                "time": rfc3339(t),
                "model_name": "credit",
                "model_version": "3",
                "feature_names": FEATURES,
                "features": [float(v) for v in features[i]],
                "prediction": LABELS[1] if y_pred[i] else LABELS[0],
                "probabilities": [1.0 - float(score[i]), float(score[i])],
                "confidence": max(float(score[i]), 1.0 - float(score[i])),
                "group_attributes": {"gender": str(gender[i]), "age_band": str(age_band[i])},
                "review": "queued" if routed[i] else None,
                "class_labels": LABELS,
                "favourable_label": FAVOURABLE,
                "decision_rule": {"kind": "threshold", "label": "repaid", "threshold": 0.5},
            }
        )
        if explained[i]:
            row = [float(v) for v in contrib[i]]
            events.append(
                {
                    "event_type": "explanation",
                    "event_id": event_id(did, "explanation"),
                    "decision_id": did,
                    "time": rfc3339(t + 1),
                    "feature_names": FEATURES,
                    "contributions": [[-v for v in row], row],
                    "base_values": [0.0, 0.0],
                }
            )
        if routed[i]:
            events.append(_review(did, "requested", t + 1, None))
            events.append(
                _review(did, "decided", t + 61, "override" if overridden[i] else "approve")
            )
        if y_true[i] >= 0:
            ev = {
                "event_type": "outcome",
                "event_id": event_id(did, "outcome"),
                "decision_id": did,
                "outcome": LABELS[int(y_true[i])],
                "observed_at": rfc3339(t + 21 * DAY),
                "received_at": rfc3339(t + 22 * DAY),
                "source": "test",
                "decision_known": True,
            }
            (early if i % 97 == 0 else late).append(ev)
    return Generated(
        events=early + events + late,
        gender=gender,
        age_band=age_band,
        y_pred=y_pred,
        y_true=y_true,
        score=score,
        features=features,
        day=day,
        routed=routed,
        overridden=overridden,
        shap=shap,
    )


def _review(did: str, action: ReviewAction, t: float, verdict: Verdict | None) -> dict[str, Any]:
    """A review step as a sidecar's store emits it (`sidecar.review.event_body`): a decided
    step's outcome is the final answer, its verdict apart, its reason prefixed by it."""
    decided = action == "decided"
    return review_event(
        decision_id=did,
        action=action,
        reason=f"{verdict}: band" if decided else "low_confidence",
        reviewer="alice" if decided else None,
        outcome=(LABELS[0] if verdict == "override" else FAVOURABLE) if decided else None,
        previous_audit_hash=f"{did}:{action}",
        time=t,
        verdict=verdict,
    )


def isclose(a: float | None, b: float, tol: float = 1e-9) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=0.0, abs_tol=tol)
