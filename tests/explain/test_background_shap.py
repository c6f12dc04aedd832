"""Explanations that use background data: interventional SHAP's additivity, and ONNX
covers counted from a background that misses some leaves (shap's kernel fallback)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explainers.ensemble import TreeEnsemble
from explainers.explainer import ExplainerOptions, build_explainer
from explainers.loader import load_model
from explainers.treeshap import ShapLibrary
from tests.explain.explain_models import (
    N_FEATURES,
    Trained,
    make_data,
    rows_to_explain,
    write_parquet,
)


@pytest.mark.parametrize("n_background", [200, 1000])
def test_interventional_adds_up_with_the_whole_background(
    xgb_models: dict[str, Trained], n_background: int, tmp_path: Path
) -> None:
    # shap keeps a random 100 rows of a plain array; the base value must come from
    # the same rows as the contributions, or they do not add up (0.01 to 0.23 before).
    m = xgb_models["binary"]
    bg_rows, _ = make_data(seed=3, n=n_background)
    bg = write_parquet(tmp_path / "bg.parquet", bg_rows)
    opts = ExplainerOptions(algorithm="interventional", interventional_rows=n_background)
    ex = build_explainer(m.path, model_version="v1", background_path=bg, options=opts)
    rows = rows_to_explain(m.X, n=20)
    out = ex.explain(rows)
    assert max(e.additivity_error for e in out) <= 1e-6
    margins = m.native.predict(bg_rows, output_margin=True)
    np.testing.assert_allclose(out[0].base_values, [margins.mean()], atol=1e-6)


def _shap_from_data(ens: TreeEnsemble, background: np.ndarray) -> Any:
    """shap.TreeExplainer over the same trees, counting the covers from ``background``
    itself: an independent count of what ``covers_from`` computes."""
    import shap

    trees = []
    for start, end in ens.tree_ranges():
        leaf = ens.left[start:end] < 0

        def local(a: np.ndarray, leaf: Any = leaf, start: int = start) -> np.ndarray:
            return np.where(leaf, -1, a - start).astype(np.int32)

        trees.append(
            {
                "children_left": local(ens.left[start:end]),
                "children_right": local(ens.right[start:end]),
                "children_default": local(ens.default[start:end]),
                "features": np.where(leaf, -2, ens.feature[start:end]).astype(np.int32),
                "thresholds": ens.threshold[start:end].copy(),
                "values": ens.value[start:end].copy(),
                "node_sample_weight": np.ones(end - start),
            }
        )
    model = {"trees": trees, "base_offset": ens.base.copy(), "tree_output": "raw_value"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Every row (a plain array would be cut to a random 100).
        data = shap.maskers.Independent(background, max_samples=len(background))
        return shap.TreeExplainer(model, data=data, feature_perturbation="tree_path_dependent")


def test_lightgbm_onnx_with_a_small_background_on_shaps_kernel(tmp_path: Path) -> None:
    # A default LightGBM (31 leaves) converted by onnxmltools; 200 background rows leave
    # some leaves unreached, which made shap raise on every explanation.
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = make_data(0, n=2000, missing=0.0)
    model = lgb.LGBMClassifier(n_estimators=40, verbose=-1).fit(X, y["binary"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = onnxmltools.convert_lightgbm(
            model, initial_types=[("x", FloatTensorType([None, N_FEATURES]))], zipmap=False
        )
    path = tmp_path / "lgb.onnx"
    path.write_bytes(onx.SerializeToString())
    bg_rows = X[:200].astype(np.float64)
    bg = write_parquet(tmp_path / "bg.parquet", bg_rows)
    # A table budget of 1 KB forces shap's kernel, whatever the fast kernel could hold.
    opts = ExplainerOptions(table_budget_bytes=1024)
    ex = build_explainer(path, model_version="v1", background_path=bg, options=opts)
    assert isinstance(ex._backend, ShapLibrary)
    rows = np.nan_to_num(rows_to_explain(X, n=30))
    out = ex.explain(rows)
    assert max(e.additivity_error for e in out) <= 1e-6
    ref = _shap_from_data(load_model(path).ensemble, bg_rows)
    phi_ref = np.asarray(ref.shap_values(rows, check_additivity=False))
    phi = np.array([e.contributions[0] for e in out])
    np.testing.assert_allclose(phi, phi_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[0].base_values, np.atleast_1d(ref.expected_value), atol=1e-5)
    # The fast kernel over the same covers explains it the same way.
    fast = build_explainer(path, model_version="v1", background_path=bg)
    phi_fast = np.array([e.contributions[0] for e in fast.explain(rows)])
    np.testing.assert_allclose(phi_fast, phi, rtol=0, atol=1e-6)


def test_a_model_the_backend_cannot_explain_is_refused_at_start(
    xgb_models: dict[str, Trained], monkeypatch: pytest.MonkeyPatch
) -> None:
    from explainers import treeshap
    from explainers.errors import ModelLoadError

    def broken(self: Any, X: np.ndarray) -> np.ndarray:
        raise RuntimeError("the kernel cannot run this model")

    monkeypatch.setattr(treeshap.FastPathDependent, "explain", broken)
    with pytest.raises(ModelLoadError, match=r"cannot be explained by .*cannot run this model"):
        build_explainer(xgb_models["binary"].path, model_version="v1")
