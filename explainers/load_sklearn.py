"""scikit-learn tree ensembles -> TreeEnsemble.

Trusted input only: an estimator object the caller already holds, or a pickle /
joblib file whose SHA-256 the operator pinned in configuration (unpickling runs
arbitrary code, so an unpinned file is refused). The portable, safe file form
for scikit-learn models is ONNX (skl2onnx), which the ONNX loader reads.

Supported: RandomForest/ExtraTrees (classifier, regressor), GradientBoosting
(classifier, regressor) and HistGradientBoosting (classifier, regressor).
Margins: forests explain the averaged leaf values (class probabilities for
classifiers, transform identity); boosting explains the raw score (log-odds).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from explainers.ensemble import Transform, TreeEnsemble, build
from explainers.errors import ModelLoadError


def load_sklearn_file(path: Path, trusted_sha256: frozenset[str]) -> tuple[TreeEnsemble, Any]:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in trusted_sha256:
        raise ModelLoadError(
            f"{path}: refusing to unpickle a file whose sha256 ({digest}) is not listed in "
            "explainer.trusted_sha256; export the model to ONNX (skl2onnx) or pin the digest"
        )
    try:
        import joblib  # a scikit-learn dependency; it also reads plain pickles

        model = joblib.load(io.BytesIO(data))
    except Exception as exc:  # a pinned but corrupt pickle can raise anything
        raise ModelLoadError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from None
    return from_sklearn(model), model


def from_sklearn(model: Any) -> TreeEnsemble:
    name = type(model).__name__
    if name in (
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "RandomForestRegressor",
        "ExtraTreesRegressor",
    ):
        return _forest(model)
    if name in ("GradientBoostingClassifier", "GradientBoostingRegressor"):
        return _gradient_boosting(model)
    if name in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
        return _hist_gradient_boosting(model)
    raise ModelLoadError(f"scikit-learn estimator {name} is not a supported tree ensemble")


def _sk_tree(tree: Any, value: Any, output: int, honours_missing: bool = True) -> dict[str, Any]:
    left = tree.children_left.astype(np.int64)
    right = tree.children_right.astype(np.int64)
    missing_left = getattr(tree, "missing_go_to_left", None)
    if missing_left is None or not honours_missing:
        # Without NaN support (and in GradientBoosting's predict loop, which ignores
        # missing_go_to_left) a NaN compares false with every threshold and goes right.
        default = right
    else:
        default = np.where(np.asarray(missing_left).astype(bool), left, right)
    return {
        "left": left,
        "right": right,
        "default": default,
        "feature": tree.feature.astype(np.int64),
        "threshold": tree.threshold.astype(np.float64),
        "value": value,
        "cover": tree.weighted_n_node_samples.astype(np.float64),
        "output": output,
    }


def _forest(model: Any) -> TreeEnsemble:
    n_trees = len(model.estimators_)
    classifier = hasattr(model, "classes_")
    trees = []
    for est in model.estimators_:
        t = est.tree_
        if classifier:
            v = t.value[:, 0, :]
            v = v / np.maximum(v.sum(axis=1, keepdims=True), 1e-300)
        else:
            v = t.value[:, :, 0]
        trees.append(_sk_tree(t, v / n_trees, -1))
    n_outputs = trees[0]["value"].shape[1]
    return build(
        trees,
        n_outputs=n_outputs,
        base=0.0,
        n_features=int(model.n_features_in_),
        transform="identity",
        input_dtype=np.float32,
        source="sklearn",
        has_cover=True,
    )


def _gradient_boosting(model: Any) -> TreeEnsemble:
    if model.init_ == "zero":
        base = np.zeros(model.estimators_.shape[1])
    else:
        dummy = np.zeros((1, model.n_features_in_), dtype=np.float32)
        base = np.asarray(model._raw_predict_init(dummy), dtype=np.float64)[0]
    k_per_stage = model.estimators_.shape[1]
    transform: Transform = "identity"
    if hasattr(model, "classes_"):
        transform = "logistic" if k_per_stage == 1 else "softmax"
    lr = float(model.learning_rate)
    trees = []
    for stage in model.estimators_:
        for k, est in enumerate(stage):
            t = est.tree_
            v = np.zeros((t.node_count, k_per_stage))
            v[:, k] = t.value[:, 0, 0] * lr
            trees.append(_sk_tree(t, v, k, honours_missing=False))
    return build(
        trees,
        n_outputs=k_per_stage,
        base=base,
        n_features=int(model.n_features_in_),
        transform=transform,
        input_dtype=np.float32,
        source="sklearn",
        has_cover=True,
    )


def _hist_gradient_boosting(model: Any) -> TreeEnsemble:
    if getattr(model, "is_categorical_", None) is not None and np.any(model.is_categorical_):
        raise ModelLoadError("HistGradientBoosting with categorical features is not supported")
    base = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    n_outputs = base.shape[0]
    transform: Transform = "identity"
    if hasattr(model, "classes_"):
        transform = "logistic" if n_outputs == 1 else "softmax"
    elif getattr(model, "loss", None) in ("poisson", "gamma"):
        transform = "exp"  # log link: the raw score is the log of the prediction
    trees = []
    for stage in model._predictors:
        for k, predictor in enumerate(stage):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            left = np.where(leaf, -1, nodes["left"].astype(np.int64))
            right = np.where(leaf, -1, nodes["right"].astype(np.int64))
            v = np.zeros((len(nodes), n_outputs))
            v[:, k] = nodes["value"]
            trees.append(
                {
                    "left": left,
                    "right": right,
                    "default": np.where(nodes["missing_go_to_left"].astype(bool), left, right),
                    "feature": nodes["feature_idx"].astype(np.int64),
                    "threshold": nodes["num_threshold"].astype(np.float64),
                    "value": v,
                    "cover": nodes["count"].astype(np.float64),
                    "output": k,
                }
            )
    return build(
        trees,
        n_outputs=n_outputs,
        base=base,
        n_features=int(model.n_features_in_),
        transform=transform,
        input_dtype=np.float64,
        source="sklearn",
        has_cover=True,
    )
