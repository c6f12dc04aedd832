"""Poisson, Tweedie and Gamma models (log links) are explained in margin space, where
the margin is the log of the prediction; ONNX graphs with other operators after the
trees are refused with a message naming the operator."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explainers.errors import ModelLoadError
from explainers.explainer import ExplainerOptions, build_explainer
from tests.explain.explain_models import N_FEATURES, make_data, rows_to_explain, write_parquet

OBJECTIVES = {
    "xgboost": ["count:poisson", "reg:tweedie", "reg:gamma"],
    "lightgbm": ["poisson", "tweedie", "gamma"],
}


def _data() -> tuple[np.ndarray, np.ndarray]:
    X, _ = make_data(0, n=600, missing=0.0)
    counts = np.random.default_rng(0).poisson(np.exp(0.6 * X[:, 0] - 0.4 * X[:, 1]))
    return X, counts.astype(np.float64) + 0.1  # Gamma needs a positive target


def _train(family: str, objective: str, tmp: Path) -> tuple[Any, Path, Path]:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _data()
    types = [("x", FloatTensorType([None, N_FEATURES]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if family == "xgboost":
            import xgboost as xgb

            model = xgb.XGBRegressor(objective=objective, n_estimators=15, max_depth=3)
            model.fit(X, y)
            path = tmp / "model.json"
            model.get_booster().save_model(str(path))
            onx = onnxmltools.convert_xgboost(model, initial_types=types, target_opset=15)
        else:
            import lightgbm as lgb

            model = lgb.LGBMRegressor(objective=objective, n_estimators=15, verbose=-1)
            model.fit(X, y)
            path = tmp / "model.txt"
            model.booster_.save_model(str(path))
            onx = onnxmltools.convert_lightgbm(model, initial_types=types, target_opset=15)
    onnx_path = tmp / "model.onnx"
    onnx_path.write_bytes(onx.SerializeToString())
    return model, path, onnx_path


@pytest.mark.parametrize(
    ("family", "objective"), [(f, o) for f, objs in OBJECTIVES.items() for o in objs]
)
def test_log_link_models_are_explained_in_log_space(
    family: str, objective: str, tmp_path: Path
) -> None:
    model, path, onnx_path = _train(family, objective, tmp_path)
    X, _ = _data()
    rows = np.nan_to_num(rows_to_explain(X, n=30))
    mean = model.predict(rows)
    bg = write_parquet(tmp_path / "bg.parquet", X.astype(np.float64))
    for artifact, background in ((path, None), (onnx_path, bg)):
        ex = build_explainer(artifact, model_version="v1", background_path=background)
        assert ex.ensemble.transform == "exp", artifact
        out = ex.explain(rows)
        margin = np.array([e.margin[0] for e in out])
        np.testing.assert_allclose(margin, np.log(mean), rtol=0, atol=1e-4)
        assert max(e.additivity_error for e in out) <= 1e-6
        # In "probability" (prediction) space the contributions add up to the mean.
        opts = ExplainerOptions(output_space="probability")
        scaled = build_explainer(
            artifact, model_version="v1", background_path=background, options=opts
        ).explain(rows)
        np.testing.assert_allclose([e.margin[0] for e in scaled], mean, rtol=1e-4)
        assert max(e.additivity_error for e in scaled) <= 1e-6 * max(1.0, float(mean.max()))


def _with_after(onnx_path: Path, op: str, tmp: Path, const: float | None = None) -> Path:
    """The graph with one more operator on its output."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    out = graph.output[0]
    inputs = [out.name]
    if const is not None:
        graph.initializer.append(
            numpy_helper.from_array(np.array([const], dtype=np.float32), "extra_c")
        )
        inputs.append("extra_c")
    graph.node.append(helper.make_node(op, inputs, ["extra_out"], name="added"))
    new_out = helper.make_tensor_value_info("extra_out", out.type.tensor_type.elem_type, None)
    graph.output.pop()
    graph.output.append(new_out)
    path = tmp / f"with_{op}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_other_operators_after_the_trees_are_refused(tmp_path: Path) -> None:
    _, _, onnx_path = _train("lightgbm", "poisson", tmp_path)
    bg = write_parquet(tmp_path / "bg.parquet", _data()[0].astype(np.float64))
    for op, const, message in (
        ("Abs", None, "unsupported operator Abs node 'added' after the tree ensemble"),
        ("Add", 1.0, "unsupported operator Add node 'added' after the tree ensemble"),
        ("Mul", -2.0, r"Mul node 'added' .*only one positive constant"),
        ("Sigmoid", None, "Sigmoid node 'added' .*second link"),
    ):
        path = _with_after(onnx_path, op, tmp_path, const)
        with pytest.raises(ModelLoadError, match=message):
            build_explainer(path, model_version="v1", background_path=bg)
    # A positive factor after the Exp is a log-space shift, and is proven at load.
    scaled = _with_after(onnx_path, "Mul", tmp_path, 2.0)
    ex = build_explainer(scaled, model_version="v1", background_path=bg)
    plain = build_explainer(onnx_path, model_version="v1", background_path=bg)
    np.testing.assert_allclose(np.array(ex._base) - np.array(plain._base), [np.log(2.0)], atol=1e-6)


@pytest.mark.parametrize("loss", ["poisson", "gamma"])
def test_hist_gradient_boosting_log_links(loss: str) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    from explainers.explainer import Explainer
    from explainers.loader import from_estimator

    X, y = _data()
    model = HistGradientBoostingRegressor(loss=loss, max_iter=10, random_state=0).fit(X, y)
    ex = Explainer(from_estimator(model), model_version="v1")
    assert ex.ensemble.transform == "exp"
    rows = np.nan_to_num(rows_to_explain(X, n=20))
    out = ex.explain(rows)
    np.testing.assert_allclose([e.margin[0] for e in out], np.log(model.predict(rows)), atol=1e-6)
    assert max(e.additivity_error for e in out) <= 1e-6
