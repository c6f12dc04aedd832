"""Online fidelity: does the explained model answer what the model server answered?

The load-time check (fidelity.py) proves the parsed trees reproduce the artifact's own
runtime; it cannot know whether the server serves that artifact. Each explained row is
therefore compared with the server's answer for it: class probabilities where the
server returned them, else a numeric prediction (regression, log-link means). Labels
alone are not compared ("unknown"): a label agrees with many different models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from explainers.ensemble import Transform

Fidelity = Literal["match", "mismatch", "unknown"]


@dataclass(frozen=True, slots=True)
class ServedCheck:
    fidelity: Fidelity
    detail: dict[str, Any] | None  # what was compared and both values; why not, if unknown

    @staticmethod
    def unknown(reason: str) -> ServedCheck:
        return ServedCheck("unknown", {"reason": reason})


def _num(v: Any) -> bool:
    # type() rather than isinstance: bool is an int subclass and is a label, not a score.
    return type(v) in (int, float) and math.isfinite(v)


def model_probabilities(prediction: Sequence[float], transform: Transform) -> list[float] | None:
    """The explained model's class probabilities, as servers write them; None for regressors."""
    if transform == "logistic" and len(prediction) == 1:
        return [1.0 - prediction[0], prediction[0]]
    if transform == "softmax" or (transform == "logistic" and len(prediction) > 1):
        return list(prediction)
    if transform == "identity" and len(prediction) > 1:
        # Forests average leaf probabilities: their margin is the probability.
        return list(prediction)
    return None


def compare_served(
    prediction: Sequence[float],
    transform: Transform,
    served_prediction: Any,
    served_probabilities: Sequence[float] | None,
    tolerance: float,
) -> ServedCheck:
    """Compare the explained model's output (``prediction``: per output, after its link)
    with the server's answer for the same row. Differences up to ``tolerance`` (relative
    above 1) are a match: servers compute in float32 and may round what they write."""
    probs = model_probabilities(prediction, transform)
    if probs is not None and served_probabilities:
        return _compare("probabilities", probs, list(served_probabilities), tolerance)
    if transform in ("identity", "exp"):  # a score or mean, not a label
        if _num(served_prediction) and len(prediction) == 1:
            return _compare("prediction", list(prediction), [float(served_prediction)], tolerance)
        if (
            isinstance(served_prediction, list)
            and len(served_prediction) == len(prediction)
            and all(_num(v) for v in served_prediction)
        ):
            return _compare(
                "prediction", list(prediction), [float(v) for v in served_prediction], tolerance
            )
        return ServedCheck.unknown("the server's answer has no number to compare")
    return ServedCheck.unknown("the server returned a label without probabilities")


def _compare(
    what: str, explained: list[float], served: list[float], tolerance: float
) -> ServedCheck:
    detail: dict[str, Any] = {
        "compared": what,
        "explained": explained,
        "served": served,
        "tolerance": tolerance,
    }
    if len(explained) != len(served):
        detail["reason"] = (
            f"the server answered {len(served)} values, the explained model {len(explained)}"
        )
        return ServedCheck("mismatch", detail)
    worst = 0.0
    ok = True
    for a, b in zip(explained, served, strict=True):
        d = abs(a - b)
        if not d <= tolerance * max(1.0, abs(b)):  # NaN or inf compares as a mismatch
            ok = False
        worst = max(worst, d) if math.isfinite(d) else math.inf
    detail["max_diff"] = worst if math.isfinite(worst) else None
    return ServedCheck("match" if ok else "mismatch", detail)
