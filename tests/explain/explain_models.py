"""Small real models, trained once per test session, saved natively and as ONNX.

Feature values sit on a 0.01 grid in float32, so no value lies within float32
rounding of a threshold: ONNX (float32 thresholds) and the native runtimes route
every row the same way, and the 1e-5 agreement checks are meaningful.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES = 6


@dataclass
class Trained:
    name: str
    task: str  # "binary" | "multiclass" | "regression"
    native: Any  # the library's model object
    path: Path  # native file (XGBoost JSON, LightGBM text) or None-like for sklearn
    onnx_path: Path
    X: np.ndarray  # training rows (float32 grid, with NaN)


def make_data(
    seed: int, n: int = 600, missing: float = 0.08
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, N_FEATURES)), 2).astype(np.float32)
    score = X[:, 0] + 0.8 * X[:, 1] * (X[:, 2] > 0) - 0.5 * X[:, 3]
    X[rng.random(X.shape) < missing] = np.nan
    y = {
        "binary": (score > 0).astype(int),
        "multiclass": np.digitize(score, [-0.6, 0.6]),
        "regression": score.astype(np.float64),
    }
    return X, y


def _onnx_types() -> tuple[Any, Any]:
    from onnxmltools.convert.common.data_types import FloatTensorType as OFT
    from skl2onnx.common.data_types import FloatTensorType as SFT

    return OFT([None, N_FEATURES]), SFT([None, N_FEATURES])


def _save_onnx(model: Any, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def train_xgboost(task: str, tmp: Path, X: np.ndarray, y: np.ndarray) -> Trained:
    import onnxmltools
    import xgboost as xgb

    params = dict(n_estimators=25, max_depth=4, learning_rate=0.3, random_state=0)
    model = xgb.XGBRegressor(**params) if task == "regression" else xgb.XGBClassifier(**params)
    model.fit(X, y)
    path = tmp / f"xgb_{task}.json"
    model.get_booster().save_model(str(path))
    oft, _ = _onnx_types()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = onnxmltools.convert_xgboost(model, initial_types=[("x", oft)], target_opset=15)
    return Trained(
        f"xgboost-{task}", task, model, path, _save_onnx(onx, tmp / f"xgb_{task}.onnx"), X
    )


def train_lightgbm(task: str, tmp: Path, X: np.ndarray, y: np.ndarray) -> Trained:
    import lightgbm as lgb
    import onnxmltools

    params = dict(n_estimators=20, num_leaves=12, min_child_samples=5, verbose=-1, random_state=0)
    model = lgb.LGBMRegressor(**params) if task == "regression" else lgb.LGBMClassifier(**params)
    model.fit(X.astype(np.float64), y)
    path = tmp / f"lgb_{task}.txt"
    model.booster_.save_model(str(path))
    oft, _ = _onnx_types()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = onnxmltools.convert_lightgbm(
            model, initial_types=[("x", oft)], target_opset=15, zipmap=False
        )
    return Trained(
        f"lightgbm-{task}", task, model, path, _save_onnx(onx, tmp / f"lgb_{task}.onnx"), X
    )


def train_sklearn(kind: str, task: str, tmp: Path, X: np.ndarray, y: np.ndarray) -> Trained:
    from skl2onnx import convert_sklearn
    from sklearn import ensemble

    cls = {
        ("rf", "binary"): lambda: ensemble.RandomForestClassifier(
            n_estimators=8, max_depth=5, bootstrap=False, max_features=0.5, random_state=0
        ),
        ("et", "regression"): lambda: ensemble.ExtraTreesRegressor(
            n_estimators=8, max_depth=5, random_state=0
        ),
        ("gb", "multiclass"): lambda: ensemble.GradientBoostingClassifier(
            n_estimators=10, max_depth=3, random_state=0
        ),
        ("gb", "binary"): lambda: ensemble.GradientBoostingClassifier(
            n_estimators=10, max_depth=3, random_state=0
        ),
        ("hgb", "binary"): lambda: ensemble.HistGradientBoostingClassifier(
            max_iter=10, max_depth=4, random_state=0
        ),
        ("hgb", "regression"): lambda: ensemble.HistGradientBoostingRegressor(
            max_iter=10, max_depth=4, random_state=0
        ),
    }[(kind, task)]
    # skl2onnx drops scikit-learn's missing-value routing, so the models converted to ONNX
    # are trained and compared without NaN; HistGradientBoosting (native only) keeps them.
    Xf = X if kind == "hgb" else np.nan_to_num(X)
    model = cls().fit(Xf, y)
    onnx_path = tmp / f"sk_{kind}_{task}.onnx"
    if kind == "hgb":
        # skl2onnx 1.20 cannot convert HistGradientBoosting (uint32 node ids); native only.
        return Trained(f"sklearn-{kind}-{task}", task, model, tmp / "unused", onnx_path, Xf)
    _, sft = _onnx_types()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            model,
            initial_types=[("x", sft)],
            target_opset={"": 15, "ai.onnx.ml": 3},
            options={id(model): {"zipmap": False}} if task != "regression" else None,
        )
    return Trained(
        f"sklearn-{kind}-{task}", task, model, tmp / "unused", _save_onnx(onx, onnx_path), Xf
    )


def write_parquet(path: Path, X: np.ndarray) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {
        f"f{i}": pa.array(X[:, i].astype(np.float64), from_pandas=True) for i in range(X.shape[1])
    }
    pq.write_table(pa.table(cols), path)
    return path


def shap_reference(model: Any, X: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """shap.TreeExplainer on the native model: (phi (rows, outputs, features), base values)."""
    import shap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = shap.TreeExplainer(model, **kwargs)
        sv = np.asarray(ref.shap_values(X, check_additivity=False), dtype=np.float64)
    if sv.ndim == 2:
        sv = sv[:, :, None]
    return np.transpose(sv, (0, 2, 1)), np.atleast_1d(
        np.asarray(ref.expected_value, dtype=np.float64)
    )


def rows_to_explain(X: np.ndarray, n: int = 60) -> np.ndarray:
    """Held-out rows on the same 0.01 grid, with missing values."""
    rows, _ = make_data(seed=99, n=n)
    return rows.astype(np.float64) if np.isnan(X).any() else np.nan_to_num(rows).astype(np.float64)
