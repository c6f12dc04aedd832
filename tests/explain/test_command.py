from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.cli import main
from tests.explain.explain_models import Trained, shap_reference, write_parquet


def test_explain_json_rows(
    xgb_models: dict[str, Trained], capsys: pytest.CaptureFixture[str]
) -> None:
    m = xgb_models["regression"]
    rows = [[None if np.isnan(v) else float(v) for v in r] for r in m.X[:3]]
    assert main(["explain", "--model", str(m.path), json.dumps(rows)]) == 0
    out = json.loads(capsys.readouterr().out)
    phi_ref, base = shap_reference(m.native, m.X[:3].astype(np.float64))
    assert len(out["rows"]) == 3
    for r, ref in zip(out["rows"], phi_ref, strict=True):
        np.testing.assert_allclose(r["contributions"], ref, atol=1e-5)
        np.testing.assert_allclose(r["base_values"], base, atol=1e-5)
        assert r["additivity_error"] < 1e-5


def test_explain_parquet_rows_with_onnx(
    xgb_models: dict[str, Trained], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = xgb_models["binary"]
    bg = write_parquet(tmp_path / "bg.parquet", m.X)
    rows = write_parquet(tmp_path / "rows.parquet", m.X[:4])
    assert main(["explain", "--model", str(m.onnx_path), "--background", str(bg), str(rows)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "onnx" and out["feature_names"][0] == "f0" and len(out["rows"]) == 4


def test_explain_errors(
    xgb_models: dict[str, Trained], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = xgb_models["regression"]
    assert main(["explain", "--model", str(m.path), "[[1, 2]]"]) == 2
    assert "rows have 2 features but the model expects 6" in capsys.readouterr().err
    assert main(["explain", "--model", str(m.path), "{not json"]) == 2
    assert "neither a JSON array nor an existing file" in capsys.readouterr().err
    assert main(["explain", "--model", str(tmp_path / "none.json"), "[[1]]"]) == 2
    assert "cannot read the model file" in capsys.readouterr().err
