"""The bundled demo model: its asset paths, its metadata, and an onnxruntime session around it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
MODEL_PATH = ASSETS_DIR / "model.onnx"
"""The ONNX tree ensemble the demo model server serves (and the explainer reads)."""
META_PATH = ASSETS_DIR / "model.json"
"""Name, version, feature names, class labels and group attributes of the demo model."""
BACKGROUND_PATH = ASSETS_DIR / "background.parquet"
"""Feature rows for node covers and interventional SHAP."""
REASONS_PATH = ASSETS_DIR / "reasons.en.toml"
"""The reason catalogue: plain words for the principal reasons of a decision."""

OUTPUT_NAMES: tuple[str, ...] = ("label", "probabilities")


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What `model.json` says about the model."""

    name: str
    version: str
    input_name: str
    feature_names: tuple[str, ...]
    class_labels: tuple[str, ...]
    positive_class: int
    group_attributes: tuple[str, ...]


def load_meta(path: str | Path = META_PATH) -> ModelMeta:
    """Read and check `model.json`; a missing or malformed key raises ValueError naming it."""
    raw: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        meta = ModelMeta(
            name=str(raw["name"]),
            version=str(raw["version"]),
            input_name=str(raw.get("input_name", "input")),
            feature_names=tuple(str(f) for f in raw["feature_names"]),
            class_labels=tuple(str(c) for c in raw["class_labels"]),
            positive_class=int(raw.get("positive_class", 1)),
            group_attributes=tuple(str(g) for g in raw.get("group_attributes", [])),
        )
    except KeyError as exc:
        raise ValueError(f"{path}: missing key {exc.args[0]!r}") from None
    if not meta.feature_names:
        raise ValueError(f"{path}: feature_names is empty")
    if not 0 <= meta.positive_class < len(meta.class_labels):
        raise ValueError(f"{path}: positive_class {meta.positive_class} is not a class index")
    return meta


def model_settings() -> dict[str, Any]:
    """The `[model]` settings that describe the bundled model to the sidecar."""
    meta = load_meta(META_PATH)
    return {
        "name": meta.name,
        "version": meta.version,
        "feature_names": list(meta.feature_names),
        "class_labels": list(meta.class_labels),
        # The bundled credit model scores the chance of default; repaying is the good outcome.
        "favourable_label": meta.class_labels[1 - meta.positive_class],
        "artifact": str(MODEL_PATH),
        "background": str(BACKGROUND_PATH),
    }


def people_settings() -> dict[str, Any]:
    """The `[reasons]` and `[recourse]` settings of the bundled credit model."""
    return {
        "reasons": {"catalogue": str(REASONS_PATH), "count": 3},
        "recourse": {
            "max_options": 3,
            # What a person can change, and which way. Not age (a group attribute is derived
            # from it), nor the record of the past (late payments, history, inquiries).
            "features": {
                "income": {"direction": "up", "min": 0.0, "max": 1000.0, "step": 1.0},
                "debt_to_income": {"direction": "down", "min": 0.0, "step": 0.01},
                "loan_amount": {"direction": "down", "min": 1.0, "step": 1.0},
                "utilization": {"direction": "down", "min": 0.0, "step": 0.01},
            },
        },
    }


class OnnxClassifier:
    """An onnxruntime session over a classifier with `label` and `probabilities` outputs."""

    def __init__(self, model_path: str | Path, meta: ModelMeta, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # One thread: a single-row tree walk takes microseconds, far less than waking a pool,
        # and the server runs beside the sidecar on a small box.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.meta = meta
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != meta.input_name:
            raise ValueError(f"{model_path}: expected one input named {meta.input_name!r}")
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != len(meta.feature_names):
            raise ValueError(
                f"{model_path}: takes {width} features, model.json names {len(meta.feature_names)}"
            )
        names = [o.name for o in self._session.get_outputs()]
        if names != list(OUTPUT_NAMES):
            raise ValueError(f"{model_path}: outputs are {names}, expected {list(OUTPUT_NAMES)}")
        self._input_name = meta.input_name

    def predict(
        self, x: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Labels [N] and class probabilities [N, C] for float32 rows [N, F]."""
        label, proba = self._session.run(None, {self._input_name: x})
        return label, proba
