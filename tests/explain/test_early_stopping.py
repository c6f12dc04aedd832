"""An early-stopped XGBoost model is explained with the trees its runtime predicts with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explainers.explainer import build_explainer
from tests.explain.explain_models import make_data, rows_to_explain


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_best_iteration_decides_the_trees(task: str, tmp_path: Path) -> None:
    import xgboost as xgb

    X, y = make_data(0, n=800)
    # A high learning rate on noisy labels stops early, well before the last round.
    noisy = np.where(np.random.default_rng(1).random(len(X)) < 0.3, 0, y[task])
    model = xgb.XGBClassifier(
        n_estimators=200, learning_rate=0.8, max_depth=4, early_stopping_rounds=3
    )
    model.fit(X[:500], noisy[:500], eval_set=[(X[500:], noisy[500:])], verbose=False)
    rounds = model.get_booster().num_boosted_rounds()
    assert model.best_iteration + 1 < rounds
    path = tmp_path / "early.json"
    model.save_model(str(path))
    ex = build_explainer(path, model_version="v1")
    per_round = 1 if task == "binary" else 3
    assert ex.ensemble.n_trees == (model.best_iteration + 1) * per_round
    rows = rows_to_explain(X, n=40)
    out = ex.explain(rows)
    # What the scikit-learn interface (and MLServer) answers for the saved file.
    served = xgb.XGBClassifier()
    served.load_model(str(path))
    margin = served.predict(rows, output_margin=True).reshape(len(rows), -1)
    np.testing.assert_allclose([e.margin for e in out], margin, atol=1e-5)
    # XGBoost's own exact TreeSHAP over the same rounds.
    booster = xgb.Booster(model_file=str(path))
    contribs = booster.predict(
        xgb.DMatrix(rows.astype(np.float32), missing=np.nan),
        pred_contribs=True,
        iteration_range=(0, model.best_iteration + 1),
    ).reshape(len(rows), per_round, -1)
    np.testing.assert_allclose([e.contributions for e in out], contribs[:, :, :-1], atol=1e-5)
    np.testing.assert_allclose(out[0].base_values, contribs[0, :, -1], atol=1e-5)


def test_every_round_when_the_server_predicts_with_every_tree(tmp_path: Path) -> None:
    import xgboost as xgb

    X, y = make_data(0, n=800)
    noisy = np.where(np.random.default_rng(1).random(len(X)) < 0.3, 0, y["binary"])
    model = xgb.XGBClassifier(n_estimators=200, learning_rate=0.8, early_stopping_rounds=3)
    model.fit(X[:500], noisy[:500], eval_set=[(X[500:], noisy[500:])], verbose=False)
    path = tmp_path / "early.json"
    model.save_model(str(path))
    ex = build_explainer(path, model_version="v1", xgboost_all_rounds=True)
    booster = xgb.Booster(model_file=str(path))
    assert ex.ensemble.n_trees == booster.num_boosted_rounds()
    rows = rows_to_explain(X, n=20)
    # What a bare Booster.predict (KServe's xgbserver) answers: every tree.
    margin = booster.predict(xgb.DMatrix(rows, missing=np.nan), output_margin=True)
    np.testing.assert_allclose([e.margin[0] for e in ex.explain(rows)], margin, atol=1e-5)
