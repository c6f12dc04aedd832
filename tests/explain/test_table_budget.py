"""The fast kernel's table budget is sized from the real paths, not from the deepest one."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from explainers import kernels
from explainers.ensemble import build
from explainers.explainer import build_explainer
from explainers.treeshap import (
    DEFAULT_TABLE_BUDGET_BYTES,
    MAX_PATH_FEATURES,
    FastPathDependent,
    ShapLibrary,
    choose_backend,
)


@pytest.fixture(scope="module")
def default_lightgbm(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, np.ndarray]:
    """LightGBM's defaults (31 leaves, no depth limit) on enough rows to grow deep trees."""
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 20))
    logit = X[:, 0] + X[:, 1] * X[:, 2] - 0.5 * X[:, 3] + 0.3 * np.sin(3 * X[:, 4])
    y = (logit + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan
    model = lgb.LGBMClassifier(verbose=-1, random_state=0).fit(X, y)
    path = tmp_path_factory.mktemp("lgb") / "default.txt"
    model.booster_.save_model(str(path))
    rows = rng.normal(size=(200, 20))
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return model, path, rows


def test_default_lightgbm_takes_the_fast_kernel(
    default_lightgbm: tuple[object, Path, np.ndarray],
) -> None:
    import shap

    model, path, rows = default_lightgbm
    ex = build_explainer(path, model_version="v1")
    ens = ex.ensemble
    # The case the depth-based estimate refused: deeper than 16 levels.
    assert int(kernels.tree_depth(ens.left, ens.right, ens.roots)) > 16
    assert isinstance(ex._backend, FastPathDependent)
    size, most = FastPathDependent.table_bytes(ens)
    assert 0 < size <= DEFAULT_TABLE_BUDGET_BYTES and most <= MAX_PATH_FEATURES
    # The estimate covers what the tables really take.
    assert ex._backend._weights.nbytes <= size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = shap.TreeExplainer(model.booster_)  # type: ignore[attr-defined]
        phi_ref = np.asarray(ref.shap_values(rows))
    phi = np.array([e.contributions for e in ex.explain(rows)])[:, 0, :]
    np.testing.assert_allclose(phi, phi_ref.reshape(phi.shape), rtol=0, atol=1e-6)
    base = np.atleast_1d(ref.expected_value)[-1]
    assert abs(ex.explain_one(rows[0]).base_values[0] - base) <= 1e-6


def test_budget_below_the_tables_falls_back(
    default_lightgbm: tuple[object, Path, np.ndarray],
) -> None:
    _, path, _ = default_lightgbm
    ens = build_explainer(path, model_version="v1").ensemble
    size, _ = FastPathDependent.table_bytes(ens)
    assert isinstance(choose_backend(ens, table_budget_bytes=size), FastPathDependent)
    assert isinstance(choose_backend(ens, table_budget_bytes=size - 1), ShapLibrary)


def _chain(n_split_features: int) -> list[dict[str, object]]:
    """One tree: a chain of splits on features 0, 1, ... each with a leaf on its right."""
    d = n_split_features
    n = 2 * d + 1
    left, right, feature = np.full(n, -1), np.full(n, -1), np.full(n, -1)
    cover = np.zeros(n)
    for i in range(d):
        node, leaf = 2 * i, 2 * i + 1
        left[node], right[node], feature[node] = node + 2, leaf, i
        cover[leaf] = 1.0
    cover[n - 1] = 1.0
    for i in reversed(range(d)):
        cover[2 * i] = cover[2 * i + 1] + cover[2 * i + 2]
    value = np.zeros((n, 1))
    value[left < 0, 0] = np.linspace(-1.0, 1.0, d + 1)
    return [
        {
            "left": left,
            "right": right,
            "default": left,
            "feature": feature,
            "threshold": np.zeros(n),
            "value": value,
            "cover": cover,
            "output": 0,
        }
    ]


@pytest.mark.parametrize("d", [MAX_PATH_FEATURES, MAX_PATH_FEATURES + 1])
def test_paths_past_the_distinct_feature_limit_fall_back(d: int) -> None:
    ens = build(
        _chain(d),
        n_outputs=1,
        base=0.0,
        n_features=d,
        transform="identity",
        input_dtype=np.float64,
        source="test",
        has_cover=True,
    )
    size, most = FastPathDependent.table_bytes(ens)
    assert most == d
    backend = choose_backend(ens)
    if d <= MAX_PATH_FEATURES:
        assert size > 0 and isinstance(backend, FastPathDependent)
        X = np.random.default_rng(0).normal(size=(5, d))
        np.testing.assert_allclose(backend.explain(X), ShapLibrary(ens).explain(X), atol=1e-9)
    else:
        assert size == -1 and isinstance(backend, ShapLibrary)
