"""Every loader against damaged files: each case loads a model that passes the fidelity
check, or is refused with ModelLoadError (or FidelityError) naming the file; memory stays
bounded. The cases run in a subprocess with a capped address space (fuzz_worker.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from explainers import ubjson
from explainers.errors import ModelLoadError
from tests.explain.explain_models import Trained, write_parquet

CASES = 90  # per file: 40 truncations, 25 random bytes and 25 changed digits, seeded
HEADROOM_MB = 1024


@pytest.fixture(scope="module")
def fuzz_report(
    xgb_models: dict[str, Trained],
    lgb_models: dict[str, Trained],
    sk_models: dict[str, Trained],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    import joblib

    tmp = tmp_path_factory.mktemp("fuzz")
    xgb = xgb_models["multiclass"]
    ubj = tmp / "model.ubj"
    xgb.native.get_booster().save_model(str(ubj))
    lgb = lgb_models["binary"]
    pkl = tmp / "forest.joblib"
    joblib.dump(sk_models["rf-binary"].native, pkl)
    bg = write_parquet(tmp / "bg.parquet", lgb.X)
    files = [
        {"name": "xgboost-json", "path": str(xgb.path)},
        {"name": "xgboost-ubj", "path": str(ubj)},
        {"name": "lightgbm", "path": str(lgb.path)},
        {"name": "onnx", "path": str(lgb.onnx_path), "background": str(bg)},
        {
            "name": "sklearn",
            "path": str(pkl),
            "trusted": [hashlib.sha256(pkl.read_bytes()).hexdigest()],
        },
    ]
    for i, f in enumerate(files):
        f.update(cases=CASES, seed=i)
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"files": files, "headroom_mb": HEADROOM_MB}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.explain.fuzz_worker", str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    # A crash (a native reader's segfault, an abort) is a failure in itself.
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("name", ["xgboost-json", "xgboost-ubj", "lightgbm", "onnx", "sklearn"])
def test_damaged_files_are_refused_cleanly(fuzz_report: dict[str, Any], name: str) -> None:
    r = fuzz_report["files"][name]
    assert r["failures"] == [], "\n".join(r["failures"])
    counts = r["counts"]
    assert sum(counts.values()) == CASES
    # Every truncation at least must have been refused.
    assert counts["refused"] + counts["fidelity"] >= CASES // 2 - 4


def test_fuzzing_memory_stays_bounded(fuzz_report: dict[str, Any]) -> None:
    assert fuzz_report["rss_growth_mb"] < 512


def test_ubj_declared_sizes_past_the_data_are_refused_before_allocating() -> None:
    # An optimised float64 array declaring 2^40 items (8 TiB) in a 20-byte document.
    doc = b"{" + b"i\x01a" + b"[$D#L" + (1 << 40).to_bytes(8, "big") + b"}"
    with pytest.raises(ModelLoadError, match=r"XGBoost UBJ, byte \d+: truncated"):
        ubjson.loads(doc)
    with pytest.raises(ModelLoadError, match="not UTF-8"):
        ubjson.loads(b"{i\x01\xffi\x00}")
    with pytest.raises(ModelLoadError, match="nested deeper"):
        ubjson.loads(b"[" * 100)
    with pytest.raises(ModelLoadError, match="after the end"):
        ubjson.loads(b"{}}")
    assert ubjson.loads(b"{i\x01a[$l#i\x02\x00\x00\x00\x01\xff\xff\xff\xff}")["a"].tolist() == [
        1,
        -1,
    ]


def test_declared_counts_must_match_the_arrays(
    xgb_models: dict[str, Trained], lgb_models: dict[str, Trained], tmp_path: Path
) -> None:
    from explainers.loader import load_model

    doc = json.loads(xgb_models["binary"].path.read_text())
    doc["learner"]["gradient_booster"]["model"]["trees"][2]["tree_param"]["num_nodes"] = "999999999"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="tree 2: tree_param num_nodes is 999999999"):
        load_model(bad)
    text = lgb_models["binary"].path.read_text()
    first = text.index("num_leaves=")
    end = text.index("\n", first)
    bad_lgb = tmp_path / "bad.txt"
    text = text[:first] + "num_leaves=999999999" + text[end:]
    bad_lgb.write_text(text)
    # LightGBM finds its trees by the byte sizes in tree_sizes: they no longer fit.
    with pytest.raises(ModelLoadError, match="tree_sizes: tree 1 does not start at byte"):
        load_model(bad_lgb)
    start = text.index("tree_sizes=")
    bad_lgb.write_text(text[:start] + text[text.index("\n", start) + 1 :])
    with pytest.raises(ModelLoadError, match="tree 0: num_leaves=999999999 but"):
        load_model(bad_lgb)


def test_declared_feature_counts_past_the_limit(
    xgb_models: dict[str, Trained], lgb_models: dict[str, Trained], tmp_path: Path
) -> None:
    from explainers import load_lightgbm, load_xgboost
    from explainers.loader import load_model

    doc = json.loads(xgb_models["binary"].path.read_text())
    param = doc["learner"]["learner_model_param"]
    bad = tmp_path / "wide.json"
    param["num_feature"] = str(load_xgboost.MAX_FEATURES)
    bad.write_text(json.dumps(doc))
    load_model(bad)  # at the limit: loads
    param["num_feature"] = str(load_xgboost.MAX_FEATURES + 1)
    bad.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="num_feature 65537 is out of range"):
        load_model(bad)
    text = lgb_models["binary"].path.read_text()
    wide = tmp_path / "wide.txt"
    wide.write_text(
        text.replace("max_feature_idx=5", f"max_feature_idx={load_lightgbm.MAX_FEATURES}")
    )
    with pytest.raises(ModelLoadError, match="max_feature_idx=65536 is out of range"):
        load_model(wide)


def test_onnx_input_wider_than_the_limit(lgb_models: dict[str, Trained], tmp_path: Path) -> None:
    import onnx

    from explainers import load_onnx
    from explainers.loader import load_model

    model = onnx.load(str(lgb_models["binary"].onnx_path))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = load_onnx.MAX_FEATURES + 1
    wide = tmp_path / "wide.onnx"
    onnx.save(model, str(wide))
    with pytest.raises(ModelLoadError, match="declares 65537 features"):
        load_model(wide)
