"""The single-row kernel (weights computed per leaf) against the table kernel."""

from __future__ import annotations

import numpy as np
import pytest

from explainers.loader import from_estimator, load_model
from explainers.treeshap import DIRECT_MAX_ROWS, FastPathDependent
from tests.explain.explain_models import Trained, rows_to_explain


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
