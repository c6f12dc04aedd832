"""XGBoost JSON and UBJ model files -> TreeEnsemble.

Both are parsed here (UBJ by explainers.ubjson, which bounds every declared size),
and the declared counts are checked against the arrays before XGBoost's own reader
(the fidelity reference) opens the file.
XGBoost compares ``x < split`` in float32, so thresholds are moved one float32
ulp down to the ensemble's ``<=`` convention, as shap does. A model saved by early
stopping keeps ``best_iteration``: only the trees up to it are explained (``trees_used``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from explainers import ubjson
from explainers.ensemble import Transform, TreeEnsemble, build, lt_to_le
from explainers.errors import ModelLoadError, converting

# objective -> (how base_score becomes a margin, transform from margin to prediction)
_OBJECTIVES: dict[str, tuple[str, Transform]] = {
    "reg:squarederror": ("identity", "identity"),
    "reg:linear": ("identity", "identity"),
    "reg:pseudohubererror": ("identity", "identity"),
    "reg:absoluteerror": ("identity", "identity"),
    "reg:quantileerror": ("identity", "identity"),
    "reg:logistic": ("logit", "logistic"),
    "binary:logistic": ("logit", "logistic"),
    "binary:logitraw": ("identity", "identity"),
    "binary:hinge": ("identity", "identity"),
    "multi:softprob": ("identity", "softmax"),
    "multi:softmax": ("identity", "softmax"),
    # Log links: base_score is a mean, the margin its log.
    "count:poisson": ("log", "exp"),
    "reg:tweedie": ("log", "exp"),
    "reg:gamma": ("log", "exp"),
}


def load_xgboost_file(path: Path, *, all_rounds: bool = False) -> TreeEnsemble:
    data = path.read_bytes()
    if path.suffix.lower() == ".ubj" or data.lstrip()[:1] != b"{":
        try:
            doc = ubjson.loads(data)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
    else:
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelLoadError(f"{path}: not a valid XGBoost JSON model ({exc})") from None
    malformed = (KeyError, TypeError, ValueError, IndexError, AttributeError)
    with converting(path, "XGBoost model", malformed):
        ens = from_xgboost_json(doc, all_rounds=all_rounds)
        check_sizes(doc)
        return ens


# Beyond any tree model we serve; the fidelity probe allocates rows x features.
MAX_FEATURES = 1 << 16
_NO_PARENT = 2147483647
_REQUIRED = ("left_children", "right_children", "split_indices", "split_conditions")
_NODE_ARRAYS = (
    *_REQUIRED,
    "default_left",
    "sum_hessian",
    "parents",
    "base_weights",
    "loss_changes",
)


def check_sizes(doc: Any) -> None:
    """Declared counts must match the arrays that follow: XGBoost's own reader (the
    fidelity reference, which reads the same file next) allocates from the counts."""
    model = doc["learner"]["gradient_booster"]
    if model.get("name") == "dart":
        model = model["gbtree"]
    model = model["model"]
    trees = model["trees"]
    declared = int(model["gbtree_model_param"]["num_trees"])
    if declared != len(trees) or len(model["tree_info"]) != len(trees):
        raise ModelLoadError(
            f"gbtree_model_param: num_trees is {declared} but the file holds {len(trees)} "
            f"trees and {len(model['tree_info'])} tree_info entries"
        )
    n_features = int(doc["learner"]["learner_model_param"]["num_feature"])
    if not 0 < n_features <= MAX_FEATURES:
        raise ModelLoadError(f"learner_model_param: num_feature {n_features} is out of range")
    for i, t in enumerate(trees):
        if int(t.get("id", i)) != i:
            # XGBoost places a tree by its id: a wrong one crashed its predict.
            raise ModelLoadError(f"tree {i} has the id {t['id']}")
        n = int(t["tree_param"]["num_nodes"])
        for key in _NODE_ARRAYS:
            if (key in t or key in _REQUIRED) and len(t[key]) != n:
                raise ModelLoadError(
                    f"tree {i}: tree_param num_nodes is {n} but {key} has {len(t[key])} entries"
                )
        if "parents" in t:
            _check_parents(i, t)
        if not any(int(s) != 0 for s in t.get("split_type", [])):
            for key in (
                "categories",
                "categories_nodes",
                "categories_segments",
                "categories_sizes",
            ):
                if len(t.get(key, [])):
                    raise ModelLoadError(f"tree {i}: {key} is set but no split is categorical")


def _check_parents(i: int, t: dict[str, Any]) -> None:
    # XGBoost's reader follows parents without checking them (a wrong one crashed it).
    left = np.asarray(t["left_children"], dtype=np.int64)
    right = np.asarray(t["right_children"], dtype=np.int64)
    parents = np.asarray(t["parents"], dtype=np.int64)
    n = len(left)
    internal = np.flatnonzero(left != -1)
    for kids in (left[internal], right[internal]):
        if ((kids < 1) | (kids >= n)).any():
            raise ModelLoadError(f"tree {i}: a child index is out of range")
        if (parents[kids] != internal).any():
            raise ModelLoadError(f"tree {i}: parents do not match the children")
    if n and parents[0] != _NO_PARENT:
        raise ModelLoadError(f"tree {i}: the root has a parent")


def from_xgboost_json(doc: dict[str, Any], *, all_rounds: bool = False) -> TreeEnsemble:
    learner = doc["learner"]
    booster = learner["gradient_booster"]
    kind = booster["name"]
    weights: list[float] | None = None
    if kind == "dart":
        weights = [float(w) for w in booster["weight_drop"]]
        booster = booster["gbtree"]
    elif kind != "gbtree":
        raise ModelLoadError(f"booster {kind!r} is not a tree ensemble (only gbtree and dart are)")
    objective = learner["objective"]["name"]
    if objective not in _OBJECTIVES:
        raise ModelLoadError(
            f"objective {objective!r} is not supported (supported: {sorted(_OBJECTIVES)})"
        )
    base_kind, transform = _OBJECTIVES[objective]
    param = learner["learner_model_param"]
    n_features = int(param["num_feature"])
    n_class = int(param.get("num_class", "0"))
    n_target = int(param.get("num_target", "1"))
    if n_target > 1:
        raise ModelLoadError("multi-target XGBoost models are not supported")
    n_outputs = max(n_class, 1)
    base = _parse_base_score(param["base_score"], n_outputs)
    if base_kind == "logit":
        base = [math.log(b / (1.0 - b)) for b in base]
    elif base_kind == "log":
        if min(base) <= 0.0:
            raise ModelLoadError(f"objective {objective!r} needs a positive base_score")
        base = [math.log(b) for b in base]
    model = booster["model"]
    tree_info = [int(g) for g in model["tree_info"]]
    n_used = len(model["trees"]) if all_rounds else trees_used(learner, model, n_outputs)
    trees = []
    for i, t in enumerate(model["trees"][:n_used]):
        if int(t["tree_param"].get("size_leaf_vector", "1")) > 1:
            raise ModelLoadError("vector-leaf (multi_strategy) XGBoost trees are not supported")
        if any(int(s) != 0 for s in t.get("split_type", [])):
            raise ModelLoadError(f"tree {i} has categorical splits, which are not supported")
        left = np.asarray(t["left_children"], dtype=np.int64)
        right = np.asarray(t["right_children"], dtype=np.int64)
        leaf = left == -1
        cond = np.asarray(t["split_conditions"], dtype=np.float32)
        value = np.where(leaf, cond.astype(np.float64), 0.0)
        if weights is not None:
            value = value * weights[i]
        default_left = np.asarray(t["default_left"], dtype=np.int64) == 1
        out = tree_info[i] if n_outputs > 1 else 0
        trees.append(
            {
                "left": left,
                "right": right,
                "default": np.where(default_left, left, right),
                "feature": np.asarray(t["split_indices"], dtype=np.int64),
                "threshold": lt_to_le(cond, np.float32),
                "value": _one_column(value, out, n_outputs),
                "cover": np.asarray(t["sum_hessian"], dtype=np.float64),
                "output": out,
            }
        )
    return build(
        trees,
        n_outputs=n_outputs,
        base=base,
        n_features=n_features,
        transform=transform,
        input_dtype=np.float32,
        source="xgboost",
        has_cover=True,
    )


def best_iteration(learner: dict[str, Any]) -> int | None:
    """The round early stopping kept (``best_iteration`` in the saved attributes), if any."""
    raw = (learner.get("attributes") or {}).get("best_iteration")
    if raw is None:
        return None
    try:
        best = int(raw)
    except ValueError:
        raise ModelLoadError(f"attribute best_iteration {raw!r} is not a number") from None
    if best < 0:
        raise ModelLoadError(f"attribute best_iteration {best} is negative")
    return best


def trees_used(learner: dict[str, Any], model: dict[str, Any], n_outputs: int) -> int:
    """How many trees a prediction uses: those up to ``best_iteration`` when early stopping
    saved one, as XGBoost's scikit-learn interface predicts (``iteration_range`` defaults
    to ``(0, best_iteration + 1)`` there, which MLServer's XGBoost runtime serves); every
    tree otherwise."""
    n_trees = len(model["trees"])
    best = best_iteration(learner)
    if best is None:
        return n_trees
    indptr = model.get("iteration_indptr")
    if indptr is not None:
        bounds = [int(v) for v in indptr]
    else:
        per_round = n_outputs * int(model["gbtree_model_param"].get("num_parallel_tree", "1"))
        bounds = list(range(0, n_trees + 1, per_round))
    if best + 1 >= len(bounds):
        raise ModelLoadError(
            f"best_iteration {best} is beyond the model's {len(bounds) - 1} boosting rounds"
        )
    return bounds[best + 1]


def _parse_base_score(raw: str, n_outputs: int) -> list[float]:
    text = raw.strip().strip("[]")
    values = [float(v) for v in text.split(",") if v.strip()]
    if len(values) == 1:
        values = values * n_outputs
    if len(values) != n_outputs:
        raise ModelLoadError(f"base_score has {len(values)} values for {n_outputs} outputs")
    return values


def _one_column(value: Any, out: int, n_outputs: int) -> Any:
    full = np.zeros((len(value), n_outputs))
    full[:, out] = value
    return full
