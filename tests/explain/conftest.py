"""Session fixtures: the small real models of explain_models.py, trained once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.explain.explain_models import (
    Trained,
    make_data,
    train_lightgbm,
    train_sklearn,
    train_xgboost,
)


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return make_data(0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def xgb_models(model_dir: Path, data: Any) -> dict[str, Trained]:
    X, y = data
    return {t: train_xgboost(t, model_dir, X, y[t]) for t in ("binary", "multiclass", "regression")}


@pytest.fixture(scope="session")
def lgb_models(model_dir: Path, data: Any) -> dict[str, Trained]:
    X, y = data
    return {
        t: train_lightgbm(t, model_dir, X, y[t]) for t in ("binary", "multiclass", "regression")
    }


@pytest.fixture(scope="session")
def sk_models(model_dir: Path, data: Any) -> dict[str, Trained]:
    X, y = data
    combos = [
        ("rf", "binary"),
        ("et", "regression"),
        ("gb", "multiclass"),
        ("gb", "binary"),
        ("hgb", "binary"),
        ("hgb", "regression"),
    ]
    return {f"{k}-{t}": train_sklearn(k, t, model_dir, X, y[t]) for k, t in combos}
