"""±inf and values beyond float32: routed as the runtimes route them (compared in the
model's float width: +inf right of every threshold, -inf left, NaN missing), and written
as JSON without crashing, in the command and in the service's events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from explainers.explainer import build_explainer
from explainers.fidelity import margins
from explainers.loader import load_model
from sidecar.cli import main
from sidecar.config import load_settings
from sidecar.metrics import Registry
from sidecar.pipeline.explain import ExplainStage
from sidecar.pipeline.explain import build_explainer as build_for_service
from sidecar.sinks.events import decision_event, dumps, explanation_event
from tests.eventlib import make_decision, validate_event
from tests.explain.explain_models import Trained, rows_to_explain, write_parquet


def _extreme_rows(X: np.ndarray) -> np.ndarray:
    rows = np.nan_to_num(rows_to_explain(X, n=12))
    rows[0, :] = np.inf
    rows[1, :] = -np.inf
    rows[2, 0], rows[2, 3] = 1e39, -1e39  # beyond float32: ±inf for float32 models
    rows[3, 1], rows[3, 2] = np.inf, np.nan
    rows[4, :] = np.finfo(np.float32).max  # the largest float32 stays finite
    return rows


def _runtime_margin(family: str, m: Trained, path: Path, rows: np.ndarray) -> np.ndarray:
    if path.suffix == ".onnx":
        # onnxruntime on the tree node's raw scores (probabilities lose the margin's digits).
        reference = load_model(path).reference
        assert reference is not None
        with np.errstate(over="ignore"):
            scores = reference(rows)
        return scores[:, -1]
    if family == "xgb":
        return np.asarray(m.native.predict(rows, output_margin=True), dtype=np.float64)
    return np.asarray(m.native.booster_.predict(rows, raw_score=True), dtype=np.float64)


@pytest.mark.parametrize("family", ["xgb", "lgb"])
def test_infinities_route_as_the_runtimes_do(
    request: pytest.FixtureRequest, family: str, tmp_path: Path
) -> None:
    m: Trained = request.getfixturevalue(f"{family}_models")["binary"]
    rows = _extreme_rows(m.X)
    bg = write_parquet(tmp_path / "bg.parquet", m.X)
    for path, background in ((m.path, None), (m.onnx_path, bg)):
        # The load-time check now probes ±inf too, so building proves the routing once more.
        ex = build_explainer(path, model_version="v1", background_path=background)
        out = ex.explain(rows)
        ours = np.array([e.margin[0] for e in out])
        np.testing.assert_allclose(ours, _runtime_margin(family, m, path, rows), atol=1e-5)
        assert max(e.additivity_error for e in out) <= 1e-6
        assert all(np.isfinite(e.contributions).all() for e in out)
        np.testing.assert_allclose(
            ours, margins(ex.ensemble, ex.ensemble.prepare(rows))[:, 0], atol=1e-12
        )


def test_the_command_writes_infinities_as_strings(
    xgb_models: dict[str, Trained], capsys: pytest.CaptureFixture[str]
) -> None:
    m = xgb_models["binary"]
    # Python's JSON reads Infinity, -Infinity and overflowing literals as ±inf.
    rows = "[[Infinity, -Infinity, 1e999, 0.5, null, 1e39], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]"
    assert main(["explain", "--model", str(m.path), "--top-k", "6", rows]) == 0
    text = capsys.readouterr().out

    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON token {token}")

    out = json.loads(text, parse_constant=refuse)
    values = {t["feature"]: t["value"] for t in out["rows"][0]["top"]}
    assert values["f0"] == "Infinity" and values["f1"] == "-Infinity"
    assert values["f2"] == "Infinity" and values["f5"] == "Infinity"  # 1e39 as float32
    assert values["f4"] is None  # missing stays null
    assert all(math.isfinite(c) for c in out["rows"][0]["contributions"][0])


def test_the_service_explains_and_publishes_infinite_features(
    xgb_models: dict[str, Trained],
) -> None:
    m = xgb_models["binary"]
    settings = load_settings(
        environ={}, overrides={"model": {"artifact": m.path, "version": "v1"}, "explainer": {}}
    )
    registry = Registry()
    explainer = build_for_service(settings, registry)
    assert explainer is not None
    stage = ExplainStage(settings, registry, explainer, lambda d, e: None)
    d = make_decision(1, features=[math.inf, -math.inf, 1e39, 0.5, None, 0.1])
    e = stage.explain_now(d)
    body = explanation_event(d, e.to_dict())
    validate_event(body)  # through json.dumps: strings, not bare Infinity
    back = orjson.loads(orjson.dumps(body))
    values = {t["feature"]: t["value"] for t in back["top"]}
    assert values["f0"] == "Infinity" and values["f1"] == "-Infinity"
    assert json.dumps(body, allow_nan=False)  # the control plane's strict JSON too
    assert orjson.loads(dumps(body))["top"] == back["top"]
    # The decision event's features are written by orjson, which writes ±inf as null.
    decision = orjson.loads(dumps(decision_event(d)))
    assert decision["features"][:3] == [None, None, 1e39]  # as sent; inf reads as null
