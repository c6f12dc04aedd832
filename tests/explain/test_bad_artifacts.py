"""Bad artifacts and bad input give a clear error naming the problem, never a crash."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from explainers.errors import ExplainerError, FidelityError, InputError, ModelLoadError
from explainers.explainer import Explainer, build_explainer
from explainers.loader import LoadedModel, from_estimator, load_model
from tests.explain.explain_models import Trained, write_parquet


def _truncate(src: Path, dst: Path, frac: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


@pytest.mark.parametrize("which", ["xgb-json", "xgb-ubj", "lgb", "onnx"])
def test_truncated_files(
    xgb_models: dict[str, Trained], lgb_models: dict[str, Trained], tmp_path: Path, which: str
) -> None:
    if which == "xgb-ubj":
        src = tmp_path / "m.ubj"
        xgb_models["binary"].native.get_booster().save_model(str(src))
    else:
        src = {
            "xgb-json": xgb_models["binary"].path,
            "lgb": lgb_models["binary"].path,
            "onnx": xgb_models["binary"].onnx_path,
        }[which]
    bad = _truncate(src, tmp_path / f"bad{src.suffix}")
    with pytest.raises(ModelLoadError) as err:
        build_explainer(bad, model_version="v1")
    assert str(bad) in str(err.value)


def test_empty_and_unknown_files(tmp_path: Path) -> None:
    empty = tmp_path / "m.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(empty)
    odd = tmp_path / "m.bin"
    odd.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        load_model(odd)
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path / "missing.onnx")


def test_unsupported_operator_before_trees(tmp_path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    pipe = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=2, max_depth=2)).fit(
        X, X[:, 0]
    )
    onx = convert_sklearn(pipe, initial_types=[("x", FloatTensorType([None, 3]))])
    path = tmp_path / "scaled.onnx"
    path.write_bytes(onx.SerializeToString())
    with pytest.raises(ModelLoadError, match="unsupported operator Scaler"):
        load_model(path)


def test_onnx_without_trees(tmp_path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    onx = convert_sklearn(
        LinearRegression().fit(X, X[:, 0]), initial_types=[("x", FloatTensorType([None, 3]))]
    )
    path = tmp_path / "linear.onnx"
    path.write_bytes(onx.SerializeToString())
    with pytest.raises(ModelLoadError, match="no TreeEnsembleClassifier/TreeEnsembleRegressor"):
        load_model(path)


def test_onnx_unsupported_split_mode(lgb_models: dict[str, Trained], tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    model = onnx.load(str(lgb_models["regression"].onnx_path))
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    for a in node.attribute:
        if a.name == "nodes_modes":
            modes = [
                b"BRANCH_EQ" if m == b"BRANCH_LEQ" else m for m in helper.get_attribute_value(a)
            ]
            a.CopyFrom(helper.make_attribute("nodes_modes", modes))
    path = tmp_path / "eq.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="split mode BRANCH_EQ is not supported"):
        load_model(path)


def test_onnx_input_narrower_than_trees(xgb_models: dict[str, Trained], tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(xgb_models["regression"].onnx_path))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2
    path = tmp_path / "narrow.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="input has 2 features"):
        load_model(path)


def test_feature_count_mismatch(xgb_models: dict[str, Trained], tmp_path: Path) -> None:
    m = xgb_models["binary"]
    bg = write_parquet(tmp_path / "bg.parquet", m.X[:, :4])
    with pytest.raises(InputError, match="background has 4 columns but the model expects 6"):
        build_explainer(m.onnx_path, model_version="v1", background_path=bg)
    ex = build_explainer(m.path, model_version="v1")
    with pytest.raises(InputError, match="rows have 5 features but the model expects 6"):
        ex.explain([[0.0] * 5])
    with pytest.raises(InputError, match="must be numbers"):
        ex.explain([["a"] * 6])
    with pytest.raises(ModelLoadError, match="3 feature names"):
        build_explainer(m.path, model_version="v1", feature_names=["a", "b", "c"])


def test_onnx_needs_background_for_path_dependent(xgb_models: dict[str, Trained]) -> None:
    with pytest.raises(ModelLoadError, match="no node covers"):
        build_explainer(xgb_models["binary"].onnx_path, model_version="v1")


def test_predictions_differ_from_runtime(xgb_models: dict[str, Trained]) -> None:
    """Trees from one model checked against another model's runtime: refused, naming the row."""
    a = load_model(xgb_models["binary"].path)
    b = load_model(xgb_models["regression"].path)
    mixed = LoadedModel(a.ensemble, b.reference, "xgboost", a.sha256)
    with pytest.raises(
        FidelityError, match=r"disagree with the reference runtime at row \d+, output 0"
    ):
        Explainer(mixed, model_version="v1")


def test_tampered_onnx_leaf_is_caught_by_ort(
    xgb_models: dict[str, Trained], tmp_path: Path
) -> None:
    """Parsed leaves altered after loading (a parser bug in disguise) fail the fidelity check."""
    from dataclasses import replace

    loaded = load_model(xgb_models["regression"].path)
    value = loaded.ensemble.value.copy()
    leaf = int(np.flatnonzero(loaded.ensemble.left < 0)[0])
    value[leaf, 0] += 0.5
    broken = LoadedModel(replace(loaded.ensemble, value=value), loaded.reference, "xgboost", "")
    with pytest.raises(FidelityError, match="refusing to explain it"):
        Explainer(broken, model_version="v1")


def test_pickles_need_a_pinned_digest(sk_models: dict[str, Trained], tmp_path: Path) -> None:
    path = tmp_path / "forest.pkl"
    path.write_bytes(pickle.dumps(sk_models["rf-binary"].native))
    with pytest.raises(ModelLoadError, match="refusing to unpickle"):
        load_model(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(path, trusted_sha256=frozenset({digest}))
    assert loaded.format == "sklearn" and loaded.ensemble.n_features == 6


def test_unsupported_estimator() -> None:
    from sklearn.linear_model import LinearRegression

    with pytest.raises(ModelLoadError, match="not a supported tree ensemble"):
        from_estimator(LinearRegression())


def test_malformed_xgboost_json(tmp_path: Path, xgb_models: dict[str, Trained]) -> None:
    import json

    doc = json.loads(xgb_models["binary"].path.read_text())
    doc["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"][0] = 10_000
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ExplainerError, match="out of range"):
        load_model(path)
    doc["learner"]["objective"]["name"] = "survival:cox"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="survival:cox"):
        load_model(path)
