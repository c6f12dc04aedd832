"""Open a model artifact: detect its format, parse it, and pair it with its reference runtime."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explainers.ensemble import TreeEnsemble
from explainers.errors import ModelLoadError
from explainers.reference import (
    Reference,
    lightgbm_reference,
    onnx_reference,
    sklearn_reference,
    xgboost_reference,
)


@dataclass(frozen=True)
class LoadedModel:
    """A parsed ensemble, how to ask its own runtime for margins, and where it came from."""

    ensemble: TreeEnsemble
    reference: Reference | None  # None when the native library is not installed
    format: str  # "onnx" | "xgboost" | "lightgbm" | "sklearn"
    sha256: str


def detect_format(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pkl", ".pickle", ".joblib"):
        return "sklearn"
    if suffix in (".json", ".ubj"):
        return "xgboost"
    if head.startswith(b"tree\n") or head.startswith(b"tree\r\n"):
        return "lightgbm"
    if head[:1] == b"{":
        return "xgboost"
    if head[:2] in (
        b"\x08\x01",
        b"\x08\x02",
        b"\x08\x03",
        b"\x08\x04",
        b"\x08\x05",
        b"\x08\x06",
        b"\x08\x07",
        b"\x08\x08",
        b"\x08\x09",
        b"\x08\x0a",
    ):
        return "onnx"  # protobuf field 1 (ir_version), varint
    raise ModelLoadError(
        f"{path}: unknown model format (expected .onnx, XGBoost .json/.ubj, or a LightGBM text model)"
    )


def load_model(
    path: str | Path,
    *,
    trusted_sha256: frozenset[str] = frozenset(),
    xgboost_all_rounds: bool = False,
) -> LoadedModel:
    """Parse ``path``; raise ModelLoadError with a message naming the file and the problem.

    ``xgboost_all_rounds``: explain every tree of an early-stopped XGBoost model, as a bare
    ``Booster.predict`` serves it, instead of the rounds up to ``best_iteration``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{p}: cannot read the model file ({exc.strerror})") from None
    if not data:
        raise ModelLoadError(f"{p}: the model file is empty")
    digest = hashlib.sha256(data).hexdigest()
    fmt = detect_format(p, data[:16])
    if fmt == "onnx":
        import onnx

        from explainers.load_onnx import load_onnx_file

        ens = load_onnx_file(p)
        try:
            ref = onnx_reference(onnx.load_model_from_string(data))
        except ModelLoadError as exc:
            raise ModelLoadError(f"{p}: {exc}") from None
        return LoadedModel(ens, ref, fmt, digest)
    if fmt == "xgboost":
        from explainers.load_xgboost import load_xgboost_file

        ens = load_xgboost_file(p, all_rounds=xgboost_all_rounds)
        native = _native(lambda q: xgboost_reference(q, xgboost_all_rounds), p)
        return LoadedModel(ens, native, fmt, digest)
    if fmt == "lightgbm":
        from explainers.load_lightgbm import load_lightgbm_file

        ens = load_lightgbm_file(p)
        return LoadedModel(ens, _native(lightgbm_reference, p), fmt, digest)
    from explainers.load_sklearn import load_sklearn_file

    ens, model = load_sklearn_file(p, trusted_sha256)
    return LoadedModel(ens, sklearn_reference(model), fmt, digest)


def from_estimator(model: Any) -> LoadedModel:
    """An in-process scikit-learn, XGBoost or LightGBM model object (trusted: the caller holds it)."""
    mod = type(model).__module__
    if mod.startswith("sklearn"):
        from explainers.load_sklearn import from_sklearn

        return LoadedModel(from_sklearn(model), sklearn_reference(model), "sklearn", "")
    raise ModelLoadError(
        f"{type(model).__name__}: save XGBoost/LightGBM models to a file and load that"
    )


def _native(make: Any, path: Path) -> Reference | None:
    try:
        ref: Reference = make(path)
    except ImportError:
        return None
    except Exception as exc:  # the native library's own error types
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise ModelLoadError(
            f"{path}: the native library cannot read this model: {first}"
        ) from None
    return ref
