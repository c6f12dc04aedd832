"""LightGBM text model files -> TreeEnsemble, parsed here (no native library needed).

LightGBM compares ``x <= threshold`` in float64; node covers are the training row
counts (``internal_count``/``leaf_count``), which is what its own TreeSHAP uses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from explainers.ensemble import Transform, TreeEnsemble, build
from explainers.errors import ModelLoadError, converting

# Beyond any tree model we serve; the fidelity probe allocates rows x features.
MAX_FEATURES = 1 << 16

_IDENTITY = {
    "regression",
    "regression_l1",
    "huber",
    "fair",
    "quantile",
    "mape",
    "lambdarank",
    "rank_xendcg",
    "custom",
}


def load_lightgbm_file(path: Path) -> TreeEnsemble:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{path}: not a LightGBM text model (not UTF-8 text)") from None
    with converting(path, "LightGBM model", (KeyError, ValueError, IndexError)):
        return from_lightgbm_text(text)


def _blocks(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    current = header
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
        elif line == "end of trees":
            break
        elif "=" in line:
            key, _, val = line.partition("=")
            current[key] = val
    return header, trees


def from_lightgbm_text(text: str) -> TreeEnsemble:
    if not text.startswith("tree"):
        raise ModelLoadError("not a LightGBM text model (does not start with 'tree')")
    if "end of trees" not in text:
        raise ModelLoadError("the model file is truncated ('end of trees' is missing)")
    header, blocks = _blocks(text)
    _check_layout(text, header, len(blocks))
    n_features = int(header["max_feature_idx"]) + 1
    per_iter = int(header.get("num_tree_per_iteration", "1"))
    if not 0 < n_features <= MAX_FEATURES:
        raise ModelLoadError(f"header: max_feature_idx={n_features - 1} is out of range")
    if not 0 < per_iter <= max(len(blocks), 1):
        raise ModelLoadError(
            f"header: num_tree_per_iteration={per_iter} for a model of {len(blocks)} trees"
        )
    transform = _transform(header.get("objective", "regression"))
    scale = 1.0
    if "average_output" in header:
        scale = per_iter / max(len(blocks), 1)
    trees = [_tree(i, b, i % per_iter, per_iter, scale) for i, b in enumerate(blocks)]
    return build(
        trees,
        n_outputs=per_iter,
        base=0.0,
        n_features=n_features,
        transform=transform,
        input_dtype=np.float64,
        source="lightgbm",
        has_cover=True,
        zero_below=float(np.float32(1e-35)),  # LightGBM compares with a float constant
    )


def _transform(objective: str) -> Transform:
    name, *params = objective.split()
    if name in _IDENTITY:
        return "identity"
    if name in ("binary", "cross_entropy", "xentropy"):
        for p in params:
            if p.startswith("sigmoid:") and float(p.split(":", 1)[1]) != 1.0:
                raise ModelLoadError(f"objective {objective!r}: only sigmoid:1 is supported")
        return "logistic"
    if name in ("multiclass", "softmax"):
        return "softmax"
    if name in ("poisson", "tweedie", "gamma"):
        return "exp"  # log link: the raw score is the log of the prediction
    raise ModelLoadError(f"objective {objective!r} is not supported")


def _check_layout(text: str, header: dict[str, str], n_trees: int) -> None:
    """What LightGBM's own reader (the fidelity reference, next) trusts without checking:
    it jumps to each tree by the byte sizes in ``tree_sizes``, and reads the parameters
    section to its end marker; wrong sizes or a cut section crashed it."""
    data = text.encode("utf-8")
    if b"\nparameters:" in data and b"end of parameters" not in data:
        raise ModelLoadError("the parameters section is truncated ('end of parameters' is missing)")
    if "tree_sizes" not in header:
        return
    sizes = [int(v) for v in header["tree_sizes"].split()]
    if len(sizes) != n_trees:
        raise ModelLoadError(f"tree_sizes lists {len(sizes)} trees, the file holds {n_trees}")
    pos = data.find(b"\nTree=") + 1
    for i, size in enumerate(sizes):
        if size < 1 or data[pos : pos + 5] != b"Tree=":
            raise ModelLoadError(f"tree_sizes: tree {i} does not start at byte {pos}")
        pos += size
    if not data[pos:].lstrip().startswith(b"end of trees"):
        raise ModelLoadError(f"tree_sizes: the trees do not end at byte {pos}")


_REQUIRED = ("num_leaves", "num_cat", "leaf_value", "split_feature", "threshold", "left_child",
             "right_child")  # fmt: skip
_INT = r"-?\d+"
_FLOAT = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|-?inf|nan"
_INTS = re.compile(f"(?:{_INT})(?: (?:{_INT}))*")
_FLOATS = re.compile(f"(?:{_FLOAT})(?: (?:{_FLOAT}))*")
_NUMBER_FIELDS = {
    "num_leaves": _INTS,
    "num_cat": _INTS,
    "is_linear": _INTS,
    "shrinkage": _FLOATS,
    "leaf_value": _FLOATS,
    "leaf_weight": _FLOATS,
    "leaf_count": _INTS,
    "split_feature": _INTS,
    "split_gain": _FLOATS,
    "threshold": _FLOATS,
    "decision_type": _INTS,
    "left_child": _INTS,
    "right_child": _INTS,
    "internal_value": _FLOATS,
    "internal_weight": _FLOATS,
    "internal_count": _INTS,
}
_LEAF_ARRAYS = ("leaf_value", "leaf_count", "leaf_weight")
_SPLIT_ARRAYS = (
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "internal_value",
    "internal_count",
    "internal_weight",
)


def _check_sizes(i: int, b: dict[str, str]) -> int:
    """num_leaves, checked against the arrays before anything is sized from it."""
    n_leaves = int(b["num_leaves"])
    if n_leaves < 1:
        raise ModelLoadError(f"tree {i}: num_leaves={n_leaves}")
    for key in (*_LEAF_ARRAYS, *_SPLIT_ARRAYS):
        want = n_leaves if key in _LEAF_ARRAYS else n_leaves - 1
        if key in b and want > 0 and len(b[key].split()) != want:
            raise ModelLoadError(
                f"tree {i}: num_leaves={n_leaves} but {key} has {len(b[key].split())} values"
            )
    # LightGBM's reader aborts the whole process (a fatal error inside a parallel loop)
    # when one of these is missing or holds anything but numbers split by single spaces.
    need = _REQUIRED if n_leaves > 1 else _REQUIRED[:3]
    missing = [key for key in need if key not in b]
    if missing:
        raise ModelLoadError(f"tree {i}: {', '.join(missing)} missing")
    for key, pattern in _NUMBER_FIELDS.items():
        if key in b and not pattern.fullmatch(b[key]):
            raise ModelLoadError(f"tree {i}: {key} is not a list of numbers")
    return n_leaves


def _floats(block: dict[str, str], key: str) -> Any:
    return np.array([float(v) for v in block[key].split()], dtype=np.float64)


def _ints(block: dict[str, str], key: str) -> Any:
    return np.array([int(v) for v in block[key].split()], dtype=np.int64)


def _tree(i: int, b: dict[str, str], out: int, n_outputs: int, scale: float) -> dict[str, Any]:
    if b.get("is_linear", "0") != "0":
        raise ModelLoadError(f"tree {i} is a linear tree, which is not supported")
    if int(b.get("num_cat", "0")) > 0:
        raise ModelLoadError(f"tree {i} has categorical splits, which are not supported")
    n_leaves = _check_sizes(i, b)
    leaf_value = _floats(b, "leaf_value") * scale
    leaf_count = _floats(b, "leaf_count") if "leaf_count" in b else np.ones(n_leaves)
    n_int = n_leaves - 1
    n = n_int + n_leaves
    value = np.zeros((n, n_outputs))
    value[n_int:, out] = leaf_value
    cover = np.zeros(n)
    cover[n_int:] = leaf_count
    if n_int == 0:
        return {
            "left": [-1],
            "right": [-1],
            "default": [-1],
            "feature": [-1],
            "threshold": [0.0],
            "value": value,
            "cover": cover,
            "output": out,
        }

    def local(c: Any) -> Any:
        # LightGBM writes leaf children as ~leaf_index.
        return np.where(c >= 0, c, n_int + (~c))

    left = local(_ints(b, "left_child"))
    right = local(_ints(b, "right_child"))
    threshold = _floats(b, "threshold")
    dtype = _ints(b, "decision_type")
    if (dtype & 1).any():
        raise ModelLoadError(f"tree {i} has categorical splits, which are not supported")
    missing = (dtype >> 2) & 3
    if (missing == 1).any():
        raise ModelLoadError(
            f"tree {i} treats zero as missing (zero_as_missing), which is not supported"
        )
    default_left = np.where(missing == 2, (dtype & 2) != 0, threshold >= 0.0)  # None: NaN -> 0.0
    cover[:n_int] = _floats(b, "internal_count") if "internal_count" in b else 0.0
    pad = np.full(n_leaves, -1)
    return {
        "left": np.concatenate([left, pad]),
        "right": np.concatenate([right, pad]),
        "default": np.concatenate([np.where(default_left, left, right), pad]),
        "feature": np.concatenate([_ints(b, "split_feature"), pad]),
        "threshold": np.concatenate([threshold, np.zeros(n_leaves)]),
        "value": value,
        "cover": cover,
        "output": out,
    }
