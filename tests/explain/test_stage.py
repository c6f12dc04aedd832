"""The sidecar's explanation stage and factory, on a real XGBoost model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from explainers.errors import ExplainerError, ModelLoadError
from explainers.explanation import Explanation
from sidecar.config import ConfigError, Settings, load_settings
from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.pipeline.explain import ExplainStage, build_explainer
from tests.explain.explain_models import Trained, write_parquet


def _settings(model: Path | None, background: Path | None = None, **explainer: object) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "model": {"artifact": model, "background": background, "version": "v7"},
            "explainer": explainer,
        },
    )


def _decisions(X: np.ndarray, rid: str = "req") -> list[Decision]:
    out = []
    for i, row in enumerate(X):
        feats = [None if np.isnan(v) else float(v) for v in row]
        out.append(_decision(rid, i, feats))
    return out


def _decision(rid: str, row: int, features: list[float | None]) -> Decision:
    return Decision(
        call_id=rid,
        row=row,
        time=0.0,
        protocol="v2",
        model_name="m",
        model_version="v7",
        features=features,
        feature_names=None,
        prediction=1,
        probabilities=None,
        confidence=0.9,
        upstream_status=200,
        upstream_latency_ms=1.0,
    )


def test_stage_explains_and_hands_on(xgb_models: dict[str, Trained]) -> None:
    m = xgb_models["multiclass"]
    settings = _settings(m.path, workers=2, batch_size=16)
    registry = Registry()
    explainer = build_explainer(settings, registry)
    assert explainer is not None
    got: list[tuple[Decision, Explanation]] = []
    lock = threading.Lock()

    def on_explained(d: Decision, e: Explanation) -> None:
        with lock:
            got.append((d, e))

    stage = ExplainStage(settings, registry, explainer, on_explained)
    stage.start()
    X = m.X[:100].astype(np.float64)
    decisions = _decisions(X)
    assert stage.submit(decisions) == 100
    assert stage.drain(30.0)
    stage.close(5.0)
    assert sorted(d.row for d, _ in got) == list(range(100))
    direct = {i: e for i, e in enumerate(explainer.explain(X))}
    for d, e in got:
        np.testing.assert_allclose(e.contributions, direct[d.row].contributions, atol=1e-12)
        assert e.model_version == "v7" and e.explainer == "treeshap.path_dependent"
        assert e.additivity_error < 1e-6 and len(e.top) == 5
        assert e.explainer_version
    text = registry.render()
    assert "sidecar_explanations_total 100" in text
    assert "sidecar_explanation_cache_hits_total" in text


def test_full_queue_sheds_without_blocking(xgb_models: dict[str, Trained]) -> None:
    m = xgb_models["binary"]
    settings = _settings(m.path, queue_size=10)
    registry = Registry()
    explainer = build_explainer(settings, registry)
    assert explainer is not None
    stage = ExplainStage(settings, registry, explainer, lambda d, e: None)
    decisions = _decisions(m.X[:25].astype(np.float64))
    # Workers not started: the queue stays full, and a submit that waited for room would
    # never return (pytest-timeout fails it), so returning at all is the check.
    assert stage.submit(decisions) == 10
    assert stage.submit(decisions[:5]) == 0
    assert "sidecar_explanations_shed_total 20" in registry.render()
    stage.start()
    assert stage.drain(30.0)
    stage.close()
    assert "sidecar_explanations_total 10" in registry.render()


def test_explain_now_uses_the_cache_and_bad_features_are_counted(
    xgb_models: dict[str, Trained],
) -> None:
    m = xgb_models["regression"]
    settings = _settings(m.path)
    registry = Registry()
    explainer = build_explainer(settings, registry)
    assert explainer is not None
    stage = ExplainStage(settings, registry, explainer, lambda d, e: None)
    d = _decisions(m.X[:1].astype(np.float64))[0]
    first, second = stage.explain_now(d), stage.explain_now(d)
    assert not first.cache_hit and second.cache_hit
    assert second.contributions == first.contributions
    assert "sidecar_explanation_cache_hits_total 1" in registry.render()
    short = _decision("x", 0, [1.0])
    with pytest.raises(ExplainerError, match="1 features but the model expects 6"):
        stage.explain_now(short)
    stage.start()
    stage.submit([short])
    assert stage.drain(10.0)
    stage.close()
    assert 'sidecar_explanations_failed_total{reason="features"} 1' in registry.render()


def test_factory(xgb_models: dict[str, Trained], tmp_path: Path) -> None:
    assert build_explainer(_settings(None), Registry()) is None
    bad = tmp_path / "model.json"
    bad.write_text('{"learner": ')
    with pytest.raises(ModelLoadError, match=r"model.artifact .*model.json"):
        build_explainer(_settings(bad), Registry())
    m = xgb_models["binary"]
    bg = write_parquet(tmp_path / "bg.parquet", m.X)
    ex = build_explainer(_settings(m.onnx_path, bg, algorithm="path_dependent"), Registry())
    assert ex is not None and ex.background_hash is not None and len(ex.background_hash) == 64
    e = ex.explain_one(m.X[0])
    assert e.background_hash == ex.background_hash
    assert e.to_dict()["feature_names"] == [f"f{i}" for i in range(6)]
    unversioned = load_settings(environ={}, overrides={"model": {"artifact": m.path}})
    ex2 = build_explainer(unversioned, Registry())
    assert ex2 is not None and ex2.model_version.startswith("sha256:")


def test_explainer_threads_reach_the_kernel(lgb_models: dict[str, Trained]) -> None:
    m = lgb_models["binary"]
    default = build_explainer(_settings(m.path), Registry())
    two = build_explainer(_settings(m.path, threads=2), Registry())
    assert default is not None and two is not None
    assert default.options.threads == 1 and two.options.threads == 2
    assert default._backend._threads == 1 and two._backend._threads == 2  # type: ignore[attr-defined]
    X = m.X[:5].astype(np.float64)
    for row in X:
        np.testing.assert_allclose(
            two.explain_one(row).contributions,
            default.explain_one(row).contributions,
            rtol=0,
            atol=1e-12,
        )


@pytest.mark.parametrize("threads", [0, 65])
def test_explainer_threads_out_of_range_fail_at_start(threads: int) -> None:
    with pytest.raises(ConfigError, match=r"explainer\.threads"):
        _settings(None, threads=threads)
