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
