"""Probability-space output for classifiers: margin contributions rescaled per output.

TreeSHAP is exact in margin space (log-odds for boosted classifiers). For people who
read probabilities, each output's contributions are scaled by
(p(x) - p(base)) / (margin(x) - base), so they add up exactly to p(x) - p(base) and
keep their ratios (and signs for binary classifiers; under softmax a class's
probability can fall while its margin rises, and then the signs flip). These are NOT Shapley values of the probability function
(that would need interventional SHAP through the link); they are labelled
``output_space = "probability"`` and documented as a rescaling.
"""

from __future__ import annotations

import numpy as np

from explainers.ensemble import FloatArray, Transform


def _softmax(m: FloatArray) -> FloatArray:
    z = np.exp(m - m.max(axis=-1, keepdims=True))
    out: FloatArray = z / z.sum(axis=-1, keepdims=True)
    return out


def to_probability(
    phi: FloatArray, margin: FloatArray, base: FloatArray, transform: Transform
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(phi, prediction, base) in probability space; phi is (rows, outputs, features)."""
    if transform == "identity":
        return phi, margin, np.broadcast_to(base, margin.shape).copy()
    if transform == "logistic":
        p = 1.0 / (1.0 + np.exp(-margin))
        pb = np.broadcast_to(1.0 / (1.0 + np.exp(-base)), p.shape)
    elif transform == "exp":
        # A log link's prediction is a mean, not a probability; the same rescaling
        # makes the contributions add up to mean(x) - mean(base).
        p = np.exp(margin)
        pb = np.broadcast_to(np.exp(base), p.shape)
        dm = margin - base
        tiny = np.abs(dm) < 1e-12
        scale = np.where(tiny, p, (p - pb) / np.where(tiny, 1.0, dm))
        return phi * scale[:, :, None], p, pb.copy()
    else:
        p = _softmax(margin)
        pb = np.broadcast_to(_softmax(base[None, :])[0], p.shape)
    dm = margin - base
    tiny = np.abs(dm) < 1e-12
    # At margin == base the ratio is 0/0; the link's slope there is its limit.
    scale = np.where(tiny, p * (1.0 - p), (p - pb) / np.where(tiny, 1.0, dm))
    return phi * scale[:, :, None], p, pb.copy()
