"""One in-memory form for every tree ensemble: flat numpy arrays.

Every loader normalises its format to these conventions, so the kernels have
one comparison to make:

- a row goes left at node n iff ``x[feature[n]] <= threshold[n]`` (strict
  "<" formats shift the threshold down by one ulp of the input dtype);
- a missing value (NaN) goes to ``default[n]``; +inf is not ``<=`` any finite threshold,
  so it goes right, and -inf goes left, as every runtime compares them (XGBoost's
  DMatrix refuses inf, but its predict, which servers call, routes it so);
- inputs are first cast to ``input_dtype`` (float32 for ONNX, XGBoost and
  scikit-learn trees, which compare in float32), then compared in float64; a value
  beyond float32's range becomes ±inf in that cast, as it does in those runtimes;
- node indices are global (tree ``t``'s root is ``roots[t]``); leaves have
  ``left == -1``;
- ``value[n, k]`` is leaf n's contribution to output k in margin space; a tree
  whose leaves feed one output only has ``tree_output[t] = k`` (else -1);
- the margin of output k is ``base[k] + sum of the reached leaves' values``,
  and the model's prediction is ``transform(margin)``: identity, logistic, softmax,
  or exp for log-link regression (Poisson, Tweedie, Gamma: the margin is the log of
  the prediction).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from explainers.errors import InputError, ModelLoadError

Transform = Literal["identity", "logistic", "softmax", "exp"]
IntArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A parsed tree ensemble (see the module docstring for the conventions)."""

    left: IntArray
    right: IntArray
    default: IntArray
    feature: IntArray
    threshold: FloatArray
    value: FloatArray  # (n_nodes, n_outputs)
    cover: FloatArray  # (n_nodes,); all zeros until covers are known
    roots: IntArray
    tree_output: IntArray
    base: FloatArray  # (n_outputs,)
    n_features: int
    transform: Transform
    input_dtype: type[np.floating[Any]]
    source: str  # "onnx", "xgboost", "lightgbm", "sklearn"
    has_cover: bool
    digest: str = field(default="")
    # LightGBM reads |x| <= 1e-35 as exactly zero before comparing (kZeroThreshold).
    zero_below: float = 0.0

    @property
    def n_outputs(self) -> int:
        return int(self.value.shape[1])

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.left.shape[0])

    def tree_ranges(self) -> list[tuple[int, int]]:
        """Node index range [start, end) of each tree (trees are stored contiguously)."""
        ends = [*self.roots[1:].tolist(), self.n_nodes]
        return list(zip(self.roots.tolist(), ends, strict=True))

    def with_cover(self, cover: FloatArray) -> TreeEnsemble:
        return _replace(self, cover=np.ascontiguousarray(cover, dtype=np.float64), has_cover=True)

    def prepare(self, rows: Any) -> FloatArray:
        """Rows as a C-contiguous float64 matrix, rounded through ``input_dtype``; None -> NaN."""
        try:
            x = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"rows must be numbers or null: {exc}") from None
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2:
            raise InputError(f"rows must be a 2-d array, got {x.ndim} dimensions")
        if x.shape[1] != self.n_features:
            raise InputError(
                f"rows have {x.shape[1]} features but the model expects {self.n_features}"
            )
        # Beyond float32's range a value becomes ±inf, as the float32 runtimes read it
        # (numpy would warn on every such cast).
        if self.input_dtype is np.float64:
            # A copy all the same: the caller's rows must not change below.
            x = np.array(x, dtype=np.float64, order="C")
        else:
            with np.errstate(over="ignore"):
                x = np.ascontiguousarray(x.astype(self.input_dtype).astype(np.float64))
        # One NaN bit pattern, so equal rows hash equal in the cache.
        x[np.isnan(x)] = np.nan
        if self.zero_below > 0.0:
            x[np.abs(x) <= self.zero_below] = 0.0
        return x

    def apply_transform(self, margin: FloatArray) -> FloatArray:
        """Margins -> the model's prediction space (probabilities for classifiers)."""
        if self.transform == "logistic":
            out: FloatArray = 1.0 / (1.0 + np.exp(-margin))
            return out
        if self.transform == "softmax":
            z = margin - margin.max(axis=1, keepdims=True)
            e = np.exp(z)
            soft: FloatArray = e / e.sum(axis=1, keepdims=True)
            return soft
        if self.transform == "exp":  # log-link regression (Poisson, Tweedie, Gamma)
            with np.errstate(over="ignore"):
                mean: FloatArray = np.exp(margin)
            return mean
        return margin


def _replace(e: TreeEnsemble, **changes: Any) -> TreeEnsemble:
    from dataclasses import replace

    return replace(e, **changes)


def build(
    trees: list[dict[str, Any]],
    *,
    n_outputs: int,
    base: Any,
    n_features: int,
    transform: Transform,
    input_dtype: type[np.floating[Any]],
    source: str,
    has_cover: bool,
    zero_below: float = 0.0,
) -> TreeEnsemble:
    """Concatenate per-tree arrays (local indices) into one validated ensemble.

    Each tree dict holds ``left, right, default, feature, threshold, cover`` (1-d, local
    node indices, -1 children at leaves), ``value`` (n_nodes, n_outputs) and ``output``
    (the single output its leaves feed, or -1).
    """
    if not trees:
        raise ModelLoadError("the model has no trees")
    lefts, rights, defaults, feats, thrs, vals, covs, roots, outs = ([] for _ in range(9))
    offset = 0
    for i, t in enumerate(trees):
        n = len(t["left"])
        if n == 0:
            raise ModelLoadError(f"tree {i} has no nodes")
        left = np.asarray(t["left"], dtype=np.int64)
        right = np.asarray(t["right"], dtype=np.int64)
        default = np.asarray(t["default"], dtype=np.int64)
        feat = np.asarray(t["feature"], dtype=np.int64)
        leaf = left < 0
        for name, arr in (("left", left), ("right", right), ("default", default)):
            bad = (~leaf) & ((arr < 0) | (arr >= n))
            if bad.any():
                raise ModelLoadError(
                    f"tree {i}: {name} child of node {int(np.argmax(bad))} is out of range"
                )
        if ((~leaf) & ((feat < 0) | (feat >= n_features))).any():
            bad_node = int(np.argmax((~leaf) & ((feat < 0) | (feat >= n_features))))
            raise ModelLoadError(
                f"tree {i}: node {bad_node} splits on feature {int(feat[bad_node])} "
                f"but the model has {n_features} features"
            )
        _check_is_tree(i, left, right)
        value = np.asarray(t["value"], dtype=np.float64).reshape(n, n_outputs)
        if not np.isfinite(value[leaf]).all():
            raise ModelLoadError(f"tree {i} has a non-finite leaf value")
        lefts.append(np.where(leaf, -1, left + offset))
        rights.append(np.where(leaf, -1, right + offset))
        defaults.append(np.where(leaf, -1, default + offset))
        feats.append(np.where(leaf, -1, feat))
        thrs.append(np.where(leaf, 0.0, np.asarray(t["threshold"], dtype=np.float64)))
        vals.append(np.where(leaf[:, None], value, 0.0))
        covs.append(np.asarray(t.get("cover", np.zeros(n)), dtype=np.float64))
        roots.append(offset)
        outs.append(int(t.get("output", -1)))
        offset += n
    base_arr = np.broadcast_to(np.asarray(base, dtype=np.float64), (n_outputs,)).copy()
    ens = TreeEnsemble(
        left=np.concatenate(lefts).astype(np.int32),
        right=np.concatenate(rights).astype(np.int32),
        default=np.concatenate(defaults).astype(np.int32),
        feature=np.concatenate(feats).astype(np.int32),
        threshold=np.ascontiguousarray(np.concatenate(thrs)),
        value=np.ascontiguousarray(np.concatenate(vals)),
        cover=np.ascontiguousarray(np.concatenate(covs)),
        roots=np.asarray(roots, dtype=np.int32),
        tree_output=np.asarray(outs, dtype=np.int32),
        base=base_arr,
        n_features=n_features,
        transform=transform,
        input_dtype=input_dtype,
        source=source,
        has_cover=has_cover,
        zero_below=zero_below,
    )
    if has_cover:
        check_covers(ens)
    return _replace(ens, digest=_digest(ens))


def _check_is_tree(i: int, left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]) -> None:
    # Every node but the root must be reached exactly once, or the kernels could loop forever.
    seen = np.zeros(len(left), dtype=np.int64)
    internal = left >= 0
    np.add.at(seen, left[internal], 1)
    np.add.at(seen, right[internal], 1)
    if seen[0] != 0 or (seen[1:] != 1).any():
        raise ModelLoadError(f"tree {i} is not a tree (a node is shared, orphaned or cyclic)")


def check_covers(e: TreeEnsemble) -> None:
    """Covers must be positive at the root and sum from children to parents."""
    internal = e.left >= 0
    if (e.cover < 0).any() or not np.isfinite(e.cover).all():
        raise ModelLoadError("node covers must be finite and non-negative")
    if (e.cover[e.roots] <= 0).any():
        raise ModelLoadError(
            "a tree's root has zero cover (no training or background rows reach it)"
        )
    child_sum = e.cover[e.left[internal]] + e.cover[e.right[internal]]
    parent = e.cover[internal]
    if not np.allclose(child_sum, parent, rtol=1e-4, atol=1e-6):
        raise ModelLoadError("node covers are inconsistent: children do not sum to their parent")


def lt_to_le(threshold: npt.ArrayLike, dtype: type[np.floating[Any]]) -> FloatArray:
    """``x < t`` as ``x <= t'`` for x of ``dtype``: t' is the next value of dtype below t."""
    t = np.asarray(threshold, dtype=dtype)
    return np.nextafter(t, dtype(-np.inf)).astype(np.float64)


def _digest(e: TreeEnsemble) -> str:
    h = hashlib.blake2b(digest_size=16)
    for arr in (e.left, e.right, e.default, e.feature, e.threshold, e.value, e.base, e.tree_output):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(f"{e.transform}:{np.dtype(e.input_dtype).name}:{e.n_features}".encode())
    return h.hexdigest()
