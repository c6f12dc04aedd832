"""The bundled assets: small, self-consistent, and reproducible from the training script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest

from sidecar.demo.data import CLASS_LABELS, FEATURE_NAMES, GROUP_ATTRIBUTES
from sidecar.demo.model import (
    ASSETS_DIR,
    BACKGROUND_PATH,
    META_PATH,
    MODEL_PATH,
    OnnxClassifier,
    load_meta,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_demo_model.py"


def test_assets_are_small() -> None:
    total = sum(p.stat().st_size for p in ASSETS_DIR.iterdir())
    assert total < 1_000_000


def test_meta_matches_the_data_generator() -> None:
    meta = load_meta()
    assert meta.name == "credit"
    assert meta.feature_names == FEATURE_NAMES
    assert meta.class_labels == CLASS_LABELS
    assert meta.group_attributes == GROUP_ATTRIBUTES
    assert meta.class_labels[meta.positive_class] == "default"
    # Group attributes are recorded, never model inputs.
    assert not set(meta.group_attributes) & set(meta.feature_names)


def test_model_is_a_plain_tensor_tree_ensemble() -> None:
    model = onnx.load(str(MODEL_PATH))
    assert [n.op_type for n in model.graph.node] == ["TreeEnsembleClassifier"]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert len(set(attrs["nodes_treeids"])) >= 50
    assert attrs["post_transform"] == b"LOGISTIC"


def test_background_holds_feature_rows_only() -> None:
    table = pq.read_table(BACKGROUND_PATH)
    assert table.column_names == list(FEATURE_NAMES)
    assert 100 <= table.num_rows <= 1000
    x = np.column_stack([table[c].to_numpy(zero_copy_only=False) for c in FEATURE_NAMES])
    assert np.isnan(x).any(), "background should carry missing values like live traffic"
    label, proba = OnnxClassifier(MODEL_PATH, load_meta()).predict(x.astype(np.float32))
    assert proba.shape == (table.num_rows, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    # Both classes occur, and some decisions are uncertain enough to route to review.
    assert set(label.tolist()) == {0, 1}
    assert ((proba[:, 1] > 0.35) & (proba[:, 1] < 0.65)).any()


def test_load_meta_names_a_missing_key(tmp_path: Path) -> None:
    raw = json.loads(META_PATH.read_text())
    del raw["feature_names"]
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="feature_names"):
        load_meta(bad)


def test_classifier_refuses_mismatched_meta(tmp_path: Path) -> None:
    raw = json.loads(META_PATH.read_text())
    raw["feature_names"] = raw["feature_names"][:-1]
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="takes 10 features"):
        OnnxClassifier(MODEL_PATH, load_meta(bad))


def test_training_is_deterministic(tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        subprocess.run(
            [sys.executable, str(SCRIPT), "--out", str(out)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    for name in ("model.onnx", "background.parquet", "model.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    # The committed metadata is what the script writes (the model bytes may move with XGBoost).
    fresh = json.loads((outs[0] / "model.json").read_text())
    committed = json.loads(META_PATH.read_text())
    assert {
        k: fresh[k]
        for k in ("name", "version", "feature_names", "class_labels", "group_attributes")
    } == {
        k: committed[k]
        for k in ("name", "version", "feature_names", "class_labels", "group_attributes")
    }
