"""Fidelity at load: the parsed ensemble must reproduce the reference runtime."""

from __future__ import annotations

import numpy as np

from explainers import kernels
from explainers.ensemble import FloatArray, TreeEnsemble
from explainers.errors import FidelityError
from explainers.reference import Reference


def margins(ens: TreeEnsemble, X: FloatArray) -> FloatArray:
    out: FloatArray = kernels.predict_margin(
        X,
        ens.left,
        ens.right,
        ens.default,
        ens.feature,
        ens.threshold,
        ens.value,
        ens.roots,
        ens.tree_output,
        ens.base,
    )
    return out


def probe_rows(ens: TreeEnsemble, n: int, seed: int = 0) -> FloatArray:
    """Rows that exercise both sides of the splits: values at, just above and just below
    each feature's thresholds, plus missing values (the cases a parser gets wrong)."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, ens.n_features))
    internal = ens.left >= 0
    dt = ens.input_dtype
    for f in range(ens.n_features):
        thr = ens.threshold[internal & (ens.feature == f)].astype(dt)
        thr = thr[np.isfinite(thr) & (np.abs(thr) < np.finfo(dt).max / 2)]
        if thr.size == 0:
            X[:, f] = rng.normal(size=n)
            continue
        pick = thr[rng.integers(0, thr.size, size=n)]
        shift = rng.integers(-1, 2, size=n)
        col = np.where(
            shift < 0,
            np.nextafter(pick, dt(-np.inf)),
            np.where(shift > 0, np.nextafter(pick, dt(np.inf)), pick),
        )
        X[:, f] = col.astype(np.float64)
    X[rng.random(X.shape) < 0.1] = np.nan
    if ens.source != "sklearn" and n >= 8:
        # ±inf and values beyond float32 (inf once cast): every runtime but scikit-learn's,
        # which refuses them, routes them; the check proves we route them the same way.
        X[:4] = np.where(rng.random((4, ens.n_features)) < 0.5, 1.0, -1.0) * np.array(
            [[np.inf], [np.inf], [1e39], [1e39]]
        )
    return ens.prepare(X)


def check_fidelity(
    ens: TreeEnsemble,
    reference: Reference,
    X: FloatArray,
    tolerance: float,
    what: str = "the model",
) -> float:
    """Compare margins on prepared rows X; raise FidelityError naming the first differing
    row and output. Returns the largest absolute difference seen."""
    ours = margins(ens, X)
    try:
        theirs = np.asarray(reference(X), dtype=np.float64)
    except Exception as exc:  # the runtime's own errors (shape, type) are reported as a mismatch
        raise FidelityError(
            f"{what}: the reference runtime failed on the check rows: {exc}"
        ) from None
    if theirs.shape[1] == 2 and ours.shape[1] == 1:
        theirs = theirs[:, 1:]  # onnxruntime's binary case writes [-score, score]
    if theirs.shape != ours.shape:
        raise FidelityError(
            f"{what}: the runtime gives {theirs.shape[1]} outputs per row, the parsed trees {ours.shape[1]}"
        )
    diff = np.abs(ours - theirs)
    bad = diff > tolerance * np.maximum(1.0, np.abs(theirs))
    if bad.any():
        r, k = (int(i) for i in np.argwhere(bad)[0])
        raise FidelityError(
            f"{what}: parsed trees disagree with the reference runtime at row {r}, output {k}: "
            f"{ours[r, k]!r} vs {theirs[r, k]!r} (tolerance {tolerance}); refusing to explain it"
        )
    return float(diff.max(initial=0.0))
