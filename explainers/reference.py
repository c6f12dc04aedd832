"""Reference runtimes: the margins the artifact's own runtime computes.

onnxruntime for ONNX (the tree node alone, post_transform NONE, so its raw scores
are compared), the native library for XGBoost, LightGBM and scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from explainers.ensemble import FloatArray
from explainers.errors import ModelLoadError

Reference = Callable[[FloatArray], FloatArray]


def onnx_reference(model: Any) -> Reference:
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from explainers.load_onnx import tree_node
    from explainers.onnx_outputs import output_chain

    node = tree_node(model)
    raw = onnx.NodeProto()
    raw.CopyFrom(node)
    raw.ClearField("input")
    raw.input.append("x")
    del raw.output[:]
    if node.op_type == "TreeEnsembleClassifier":
        raw.output.extend(["label", "scores"])
    else:
        raw.output.append("scores")
    for a in raw.attribute:
        if a.name == "post_transform":
            a.s = b"NONE"
    dtype = model.graph.input[0].type.tensor_type.elem_type
    inp = helper.make_tensor_value_info("x", dtype, [None, None])
    out = helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [None, None])
    graph = helper.make_graph([raw], "trees", [inp], [out])
    ml = [o for o in model.opset_import if o.domain == "ai.onnx.ml"]
    sub = helper.make_model(graph, opset_imports=[*ml, helper.make_opsetid("", 17)])
    sub.ir_version = model.ir_version
    try:
        session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise ModelLoadError(f"onnxruntime refuses the tree ensemble: {exc}") from None
    np_dtype = np.float64 if dtype == onnx.TensorProto.DOUBLE else np.float32
    chain = output_chain(model, node, _post_transform(node))
    if chain.link == "exp" and chain.output is not None:
        # A log link written as operators (Exp, Mul): the whole graph is run and its answer
        # taken back to margins, so the check proves the operators were read right.
        return _whole_graph_log(model, chain.output, np_dtype)

    def run(X: FloatArray) -> FloatArray:
        scores = np.asarray(session.run(["scores"], {"x": X.astype(np_dtype)})[0], dtype=np.float64)
        return scores

    return run


def _post_transform(node: Any) -> str:
    for a in node.attribute:
        if a.name == "post_transform":
            return a.s.decode() if isinstance(a.s, bytes) else str(a.s)
    return "NONE"


def _whole_graph_log(model: Any, output: str, np_dtype: Any) -> Reference:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise ModelLoadError(f"onnxruntime refuses the model: {exc}") from None
    name = model.graph.input[0].name

    def run(X: FloatArray) -> FloatArray:
        out = np.asarray(session.run([output], {name: X.astype(np_dtype)})[0], dtype=np.float64)
        with np.errstate(divide="ignore"):
            logged: FloatArray = np.log(out).reshape(X.shape[0], -1)
        return logged

    return run


def xgboost_reference(path: Path, all_rounds: bool = False) -> Reference:
    import xgboost

    booster = xgboost.Booster(model_file=str(path))
    # As XGBModel.predict does for a loaded model: up to best_iteration when one was saved.
    best = booster.attr("best_iteration")
    rounds = (0, int(best) + 1) if best is not None and not all_rounds else (0, 0)

    def run(X: FloatArray) -> FloatArray:
        # inplace_predict, as XGBModel.predict (and so the servers) call it: a DMatrix
        # would refuse ±inf, which the servers' predict routes.
        m = booster.inplace_predict(
            X.astype(np.float32), predict_type="margin", missing=np.nan, iteration_range=rounds
        )
        return np.asarray(m, dtype=np.float64).reshape(X.shape[0], -1)

    return run


def lightgbm_reference(path: Path) -> Reference:
    import lightgbm

    booster = lightgbm.Booster(model_file=str(path))

    def run(X: FloatArray) -> FloatArray:
        m = booster.predict(X, raw_score=True)
        return np.asarray(m, dtype=np.float64).reshape(X.shape[0], -1)

    return run


def sklearn_reference(model: Any) -> Reference:
    name = type(model).__name__

    # Forests and GradientBoosting compare in float32; HistGradientBoosting in float64.
    dtype = np.float64 if name.startswith("HistGradientBoosting") else np.float32

    def run(X: FloatArray) -> FloatArray:
        X = X.astype(dtype)
        if name.startswith(("RandomForest", "ExtraTrees")):
            out = model.predict_proba(X) if hasattr(model, "classes_") else model.predict(X)
        else:
            out = model._raw_predict(X)
        return np.asarray(out, dtype=np.float64).reshape(X.shape[0], -1)

    return run
