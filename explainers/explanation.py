"""The explanation record shared with the sidecar's sinks, events and review console."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Explanation:
    """TreeSHAP for one row: contributions (outputs x features) in margin space."""

    model_version: str
    explainer: str  # e.g. "treeshap.path_dependent"
    explainer_version: str
    # "margin": exact TreeSHAP of the raw score (log-odds for boosted classifiers, the
    # averaged probability for forests); "probability": that, rescaled (probability.py).
    output_space: str
    feature_names: list[str]
    base_values: list[float]  # one per model output
    contributions: list[list[float]]  # outputs x features
    additivity_error: float  # max over outputs of |sum(contrib) + base - margin|
    cache_hit: bool
    background_hash: str | None
    top: list[dict[str, Any]]  # k largest |contribution| for the output of interest
    margin: list[float]  # the model's output per output, in output_space
    # The model's prediction per output after its link (probabilities for classifiers,
    # means for log links): what is compared with the server's answer.
    prediction: list[float] = field(default_factory=list)
    # Whether that matched what the model server answered for this row (served.py):
    # "match", "mismatch" (never present it as the reason for the answer) or "unknown".
    fidelity: str = "unknown"
    fidelity_detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Exactly the contract's keys, JSON-ready."""
        return {
            "model_version": self.model_version,
            "explainer": self.explainer,
            "explainer_version": self.explainer_version,
            "output_space": self.output_space,
            "feature_names": list(self.feature_names),
            "base_values": list(self.base_values),
            "contributions": [list(c) for c in self.contributions],
            "additivity_error": self.additivity_error,
            "cache_hit": self.cache_hit,
            "background_hash": self.background_hash,
            "top": [dict(t) for t in self.top],
            "margin": list(self.margin),
            "fidelity": self.fidelity,
            "fidelity_detail": self.fidelity_detail,
        }


def json_value(v: float) -> float | str | None:
    """Feature values as JSON: NaN (missing) becomes null; JSON has no infinity, so ±inf
    becomes the string "Infinity" or "-Infinity" (null would read as missing)."""
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return float(v)
