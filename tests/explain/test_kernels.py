"""The single-row kernel (weights computed per leaf) against the table kernel and shap;
the per-row summaries against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explainers import kernels
from explainers.ensemble import TreeEnsemble
from explainers.loader import from_estimator, load_model
from explainers.treeshap import DIRECT_MAX_ROWS, FastPathDependent
from tests.explain.explain_models import Trained, rows_to_explain, shap_reference


@pytest.mark.parametrize(
    ("family", "key"),
    [("xgb", "multiclass"), ("xgb", "binary"), ("lgb", "regression"), ("sk", "rf-binary")],
)
def test_direct_and_table_kernels_agree(
    request: pytest.FixtureRequest, family: str, key: str
) -> None:
    m: Trained = request.getfixturevalue(f"{family}_models")[key]
    loaded = from_estimator(m.native) if family == "sk" else load_model(m.path)
    backend = FastPathDependent(loaded.ensemble, threads=1)
    assert backend._bits
    X = loaded.ensemble.prepare(rows_to_explain(m.X, n=40))
    tables = backend.explain(X)  # 40 rows: the table kernel
    one_by_one = np.concatenate([backend.explain(X[i : i + 1]) for i in range(len(X))])
    few = backend.explain(X[:DIRECT_MAX_ROWS])
    np.testing.assert_allclose(one_by_one, tables, rtol=0, atol=1e-12)
    np.testing.assert_allclose(few, tables[:DIRECT_MAX_ROWS], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("family", "key"),
    [("xgb", "multiclass"), ("xgb", "binary"), ("lgb", "regression"), ("lgb", "multiclass")],
)
@pytest.mark.parametrize("threads", [2, 3])
def test_single_rows_split_across_threads_match_one_thread(
    request: pytest.FixtureRequest, family: str, key: str, threads: int
) -> None:
    m: Trained = request.getfixturevalue(f"{family}_models")[key]
    ens = load_model(m.path).ensemble
    one = FastPathDependent(ens, threads=1)
    split = FastPathDependent(ens, threads=threads, split_min_work=0)
    assert split._tree_chunks is not None and len(split._tree_chunks) == threads + 1
    assert one._tree_chunks is None
    X = ens.prepare(rows_to_explain(m.X, n=DIRECT_MAX_ROWS * 4))
    for i in range(0, len(X), DIRECT_MAX_ROWS):
        rows = X[i : i + 1 + i % DIRECT_MAX_ROWS]
        np.testing.assert_allclose(split.explain(rows), one.explain(rows), rtol=0, atol=1e-12)


def test_small_models_keep_single_rows_on_one_thread(xgb_models: dict[str, Trained]) -> None:
    ens = load_model(xgb_models["binary"].path).ensemble
    work = int((FastPathDependent(ens, threads=1)._n_unique + 1).sum())
    assert FastPathDependent(ens, threads=2, split_min_work=work + 1)._tree_chunks is None
    assert FastPathDependent(ens, threads=2, split_min_work=work)._tree_chunks is not None


def _satisfied_counts(backend: FastPathDependent, ens: TreeEnsemble, x: np.ndarray) -> np.ndarray:
    """Per leaf, how many of its path's features the row satisfies, walked edge by edge
    (not from the kernel's bit masks)."""
    counts = np.empty(len(backend._n_unique), dtype=np.int64)
    for li in range(len(counts)):
        ok = np.ones(backend._n_unique[li], dtype=bool)
        for q in range(backend._n_edges[li]):
            node = backend._edge_node[li, q]
            v = x[ens.feature[node]]
            goes_left = (
                ens.default[node] == ens.left[node] if np.isnan(v) else v <= ens.threshold[node]
            )
            if goes_left != backend._edge_left[li, q]:
                ok[backend._edge_slot[li, q]] = False
        counts[li] = ok.sum()
    return counts


def test_single_rows_hit_every_closed_form_and_match_shap(tmp_path: Path) -> None:
    """A default-sized LightGBM model (31 leaves, unbounded depth): single rows reach leaves
    where they satisfy 0, 1, 2, 3 and 4 path features (the written-out sums) and more (the
    general loops), and each row agrees with shap on the native model."""
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    # Twelve features that all matter, so that deep paths have many distinct features.
    X = np.round(rng.normal(size=(4000, 12)), 2)
    score = X @ rng.normal(size=12) + X[:, 0] * X[:, 1] - np.abs(X[:, 2] * X[:, 3])
    X[rng.random(X.shape) < 0.05] = np.nan
    model = lgb.LGBMClassifier(n_estimators=15, verbose=-1, random_state=0)
    model.fit(X, (score > 0).astype(int))
    path = tmp_path / "lgb31.txt"
    model.booster_.save_model(str(path))
    ens = load_model(path).ensemble
    backend = FastPathDependent(ens, threads=1)
    assert backend._bits and int(backend._n_unique.max()) >= 5
    rows = ens.prepare(np.round(rng.normal(size=(12, 12)), 2))
    seen = np.zeros(6, dtype=np.int64)
    for x in rows:
        seen += np.bincount(np.minimum(_satisfied_counts(backend, ens, x), 5), minlength=6)
    assert (seen > 0).all(), seen
    phi_ref, _ = shap_reference(model, rows)
    for i in range(len(rows)):
        one = backend.explain(rows[i : i + 1])
        np.testing.assert_allclose(one[0, 0], phi_ref[i, -1], rtol=0, atol=1e-9)


def test_summaries_match_numpy() -> None:
    rng = np.random.default_rng(5)
    phi = np.round(rng.normal(size=(40, 3, 9)), 1)  # rounded: many tied |contributions|
    phi[3, 1, :] = 0.0
    m = phi.sum(axis=2) + rng.normal(scale=1e-9, size=(40, 3))
    base = np.zeros((1, 3))
    outs = rng.integers(0, 3, size=40)
    for k in (1, 5, 9):
        err, top = kernels.summarise(phi, m, base, outs, k)
        np.testing.assert_allclose(err, np.abs(phi.sum(axis=2) + base - m).max(axis=1), atol=1e-12)
        of_interest = phi[np.arange(40), outs]
        expected = np.argsort(-np.abs(of_interest), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top, expected)
    bases = rng.normal(size=(40, 3))
    err, _ = kernels.summarise(phi, m + bases, bases, outs, 2)
    np.testing.assert_allclose(
        err, np.abs(phi.sum(axis=2) + bases - m - bases).max(axis=1), atol=1e-12
    )
    phi[7, 0, 2] = np.nan
    phi[8, 2, 0] = np.inf
    err, top = kernels.summarise(phi, m, base, np.zeros(40, dtype=np.int64), 9)
    assert np.isinf(err[7]) and np.isinf(err[8]) and np.isfinite(err[9])
    assert top[7, -1] == 2  # NaN sorts last, as in argsort
