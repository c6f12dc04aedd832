"""Train the bundled demo model and write its assets (deterministic: same inputs, same bytes).

    .venv/bin/python scripts/train_demo_model.py [--out sidecar/demo/assets]

Writes `model.onnx` (an ONNX TreeEnsembleClassifier: outputs `label` int64 [N] and
`probabilities` float32 [N, 2], no ZipMap), `background.parquet` (feature rows for node
covers) and `model.json` (name, version, feature names, class labels, group attributes).
XGBoost rather than scikit-learn's GradientBoosting because it learns a default
direction for missing values, which the ONNX tree ensemble carries over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxmltools
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.metrics import roc_auc_score

from sidecar.demo.data import CLASS_LABELS, FEATURE_NAMES, GROUP_ATTRIBUTES, generate

MODEL_NAME = "credit"
MODEL_VERSION = "1"
SEED = 7
N_TRAIN = 8000
N_TEST = 2000
N_BACKGROUND = 300
N_TREES = 80
MAX_DEPTH = 3
# onnxmltools' XGBoost converter supports up to opset 15; onnxruntime runs it natively.
TARGET_OPSET = 15
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "sidecar" / "demo" / "assets"


def train(out: Path) -> dict[str, object]:
    train_set = generate(N_TRAIN, seed=SEED)
    test_set = generate(N_TEST, seed=SEED + 1)
    model = xgb.XGBClassifier(
        n_estimators=N_TREES,
        max_depth=MAX_DEPTH,
        learning_rate=0.15,
        # A fixed base score keeps the ONNX base value obvious and version-independent.
        base_score=0.5,
        tree_method="exact",
        n_jobs=1,
        random_state=0,
    )
    model.fit(train_set.features, train_set.label)

    onx = onnxmltools.convert_xgboost(
        model,
        name=MODEL_NAME,
        initial_types=[("input", FloatTensorType([None, len(FEATURE_NAMES)]))],
        target_opset=TARGET_OPSET,
    )
    onx.doc_string = "Synthetic credit default model (bundled demo); class 1 = default."
    data = onx.SerializeToString()

    # The served artifact must agree with the model it came from, NaNs included.
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": test_set.features})
    expected = model.predict_proba(test_set.features)
    gap = float(np.abs(proba - expected).max())
    if gap > 1e-5:
        raise SystemExit(f"ONNX and XGBoost disagree by {gap}")
    auc = float(roc_auc_score(test_set.label, proba[:, 1]))

    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
    background = generate(N_BACKGROUND, seed=SEED + 2).features
    table = pa.table({name: background[:, i] for i, name in enumerate(FEATURE_NAMES)})
    pq.write_table(table, out / "background.parquet", compression="zstd")
    meta: dict[str, object] = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "input_name": "input",
        "feature_names": list(FEATURE_NAMES),
        "class_labels": list(CLASS_LABELS),
        "positive_class": 1,
        "group_attributes": list(GROUP_ATTRIBUTES),
        "outputs": ["label", "probabilities"],
        "trees": N_TREES,
        "max_depth": MAX_DEPTH,
        "train_rows": N_TRAIN,
        "seed": SEED,
        "test_auc": round(auc, 4),
        "test_default_rate": round(float(test_set.label.mean()), 4),
        "predicted_default_rate": round(float(label.mean()), 4),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="asset folder to write")
    args = parser.parse_args(argv)
    meta = train(args.out)
    print(json.dumps({"out": str(args.out), **meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
