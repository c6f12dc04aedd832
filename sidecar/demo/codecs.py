"""Request decoding and response encoding for the demo model server's three protocols.

Every decoder turns a parsed JSON body into a float32 matrix [N, F] in the model's feature
order, with JSON null as NaN (a missing value the trees route by their default direction),
and raises `InputError` naming what is wrong for anything else.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from sidecar.demo.model import OUTPUT_NAMES, ModelMeta

Matrix = npt.NDArray[np.float32]

# V2 numeric datatypes; BYTES and BOOL are not features of this model.
_V2_NUMERIC = frozenset(
    {
        "FP16",
        "FP32",
        "FP64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
    }
)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class InputError(Exception):
    """A client error: answered with `status` and `{"error": message}`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _numbers(values: Any, where: str) -> npt.NDArray[np.float64]:
    """`values` (nested lists of numbers and nulls) as float64, refusing strings and booleans."""
    try:
        arr = np.asarray(values)
    except ValueError:
        raise InputError(f"{where}: rows have different lengths") from None
    if arr.dtype.kind in "fiu":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "O":
        # Only nulls (or huge integers) make an object array; check every element once.
        for v in arr.ravel():
            if v is not None and type(v) not in (int, float):
                raise InputError(f"{where}: {_describe(v)} is not a number or null")
        return np.array(arr, dtype=np.float64)
    if arr.dtype.kind == "b":
        raise InputError(f"{where}: booleans are not numbers")
    raise InputError(
        f"{where}: {_describe(arr.ravel()[0]) if arr.size else 'value'} is not a number"
    )


def _describe(v: Any) -> str:
    text = repr(v.item() if isinstance(v, np.generic) else v)
    return text if len(text) <= 40 else text[:37] + "..."


def rows_matrix(values: Any, meta: ModelMeta, where: str) -> Matrix:
    """A list of rows, each a list of F values, as a float32 [N, F] matrix."""
    if not isinstance(values, list) or not values:
        raise InputError(f"{where}: expected a non-empty list of rows")
    if isinstance(values[0], dict):
        return records_matrix(values, meta, where)
    arr = _numbers(values, where)
    width = len(meta.feature_names)
    if arr.ndim == 1 and arr.size == width and not isinstance(values[0], list):
        raise InputError(f"{where}: expected a list of rows, got one flat row; wrap it in [...]")
    if arr.ndim != 2 or arr.shape[1] != width:
        raise InputError(f"{where}: each row must have {width} values, got shape {list(arr.shape)}")
    return arr.astype(np.float32)


def records_matrix(records: Sequence[Any], meta: ModelMeta, where: str) -> Matrix:
    """Rows given as objects keyed by feature name (all features, no others)."""
    names = meta.feature_names
    known = frozenset(names)
    table: list[list[Any]] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(f"{where}[{i}]: expected an object keyed by feature name")
        if len(rec) != len(names) or rec.keys() != known:
            missing = [n for n in names if n not in rec]
            extra = [k for k in rec if k not in known]
            detail = f"missing {missing}" if missing else ""
            detail += ("; " if missing and extra else "") + (f"unknown {extra}" if extra else "")
            raise InputError(f"{where}[{i}]: {detail} (use null for a missing value)")
        table.append([rec[n] for n in names])
    return _numbers(table, where).astype(np.float32)


def columns_matrix(columns: dict[str, Any], meta: ModelMeta, where: str) -> Matrix:
    """Columns given as {feature name: [values]} of one length."""
    names = meta.feature_names
    missing = [n for n in names if n not in columns]
    extra = [k for k in columns if k not in meta.feature_names]
    if missing or extra:
        raise InputError(f"{where}: missing columns {missing}, unknown columns {extra}")
    cols = [_numbers(columns[n], f"{where}.{n}") for n in names]
    lengths = {c.shape for c in cols}
    if len(lengths) != 1 or cols[0].ndim != 1 or cols[0].size == 0:
        raise InputError(f"{where}: columns must be non-empty lists of one length")
    return np.column_stack(cols).astype(np.float32)


# --- Open Inference Protocol (V2) ---------------------------------------------------------


def decode_v2(body: Any, meta: ModelMeta) -> tuple[Matrix, list[str], str | None]:
    """(rows, requested output names, request id) from a V2 infer request."""
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("'inputs' must be a non-empty list of tensors")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError("'id' must be a string")
    if len(inputs) == 1 and _field(inputs[0], "name", 0) not in meta.feature_names:
        x = _v2_matrix(inputs[0], meta)
    else:
        x = _v2_columns(inputs, meta)
    return x, _v2_outputs(body.get("outputs")), request_id


def _field(tensor: Any, key: str, index: int) -> Any:
    if not isinstance(tensor, dict):
        raise InputError(f"inputs[{index}] must be an object")
    if key not in tensor:
        raise InputError(f"inputs[{index}] has no '{key}'")
    return tensor[key]


def _v2_tensor(tensor: Any, index: int) -> tuple[list[int], npt.NDArray[np.float64]]:
    name = _field(tensor, "name", index)
    where = f"inputs[{index}] ({name})"
    datatype = _field(tensor, "datatype", index)
    if datatype not in _V2_NUMERIC:
        raise InputError(f"{where}: datatype {datatype!r} is not numeric (use FP32 or FP64)")
    shape = _field(tensor, "shape", index)
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"{where}: shape must be a list of non-negative integers")
    data = _numbers(_field(tensor, "data", index), f"{where}.data")
    if data.size != math.prod(shape):
        raise InputError(
            f"{where}: shape {shape} holds {math.prod(shape)} values, data has {data.size}"
        )
    return shape, data.reshape(shape)


def _v2_matrix(tensor: Any, meta: ModelMeta) -> Matrix:
    shape, data = _v2_tensor(tensor, 0)
    width = len(meta.feature_names)
    if len(shape) != 2 or shape[1] != width or shape[0] == 0:
        raise InputError(f"inputs[0]: shape must be [N, {width}] with N >= 1, got {shape}")
    return data.astype(np.float32)


def _v2_columns(inputs: list[Any], meta: ModelMeta) -> Matrix:
    by_name: dict[str, npt.NDArray[np.float64]] = {}
    rows: int | None = None
    for i, tensor in enumerate(inputs):
        shape, data = _v2_tensor(tensor, i)
        name = tensor["name"]
        if name not in meta.feature_names:
            raise InputError(f"inputs[{i}]: {name!r} is not a feature of {meta.name}")
        if name in by_name:
            raise InputError(f"inputs[{i}]: feature {name!r} given twice")
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] == 0:
            raise InputError(f"inputs[{i}] ({name}): shape must be [N] or [N, 1], got {shape}")
        if rows is not None and shape[0] != rows:
            raise InputError(f"inputs[{i}] ({name}): has {shape[0]} rows, earlier inputs {rows}")
        rows = shape[0]
        by_name[name] = data.reshape(-1)
    missing = [n for n in meta.feature_names if n not in by_name]
    if missing:
        raise InputError(f"inputs: missing features {missing}")
    return np.column_stack([by_name[n] for n in meta.feature_names]).astype(np.float32)


def _v2_outputs(requested: Any) -> list[str]:
    if requested is None:
        return list(OUTPUT_NAMES)
    if not isinstance(requested, list):
        raise InputError("'outputs' must be a list of {\"name\": ...} objects")
    names: list[str] = []
    for i, out in enumerate(requested):
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OUTPUT_NAMES:
            raise InputError(
                f"outputs[{i}]: unknown output {name!r}; this model has {list(OUTPUT_NAMES)}"
            )
        names.append(name)
    return names


def encode_v2(
    meta: ModelMeta,
    request_id: str | None,
    label: npt.NDArray[np.int64],
    proba: npt.NDArray[np.float32],
    outputs: list[str],
) -> bytes:
    tensors: list[dict[str, Any]] = []
    for name in outputs:
        if name == "label":
            tensors.append(
                {"name": "label", "shape": [len(label)], "datatype": "INT64", "data": label}
            )
        else:
            tensors.append(
                {
                    "name": "probabilities",
                    "shape": list(proba.shape),
                    "datatype": "FP32",
                    "data": proba.ravel(),
                }
            )
    return orjson.dumps(
        {
            "model_name": meta.name,
            "model_version": meta.version,
            "id": request_id if request_id is not None else uuid.uuid4().hex,
            "parameters": {"content_type": "np"},
            "outputs": tensors,
        },
        option=_NUMPY,
    )


# --- KServe V1 and MLflow -----------------------------------------------------------------


def decode_v1(body: Any, meta: ModelMeta) -> Matrix:
    """`{"instances": rows}` (rows as lists or as objects keyed by feature name); `inputs` too."""
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object")
    for key in ("instances", "inputs"):
        if key in body:
            return rows_matrix(body[key], meta, key)
    raise InputError("expected 'instances': a list of rows")


def decode_mlflow(body: Any, meta: ModelMeta) -> Matrix:
    """MLflow scoring-server input: dataframe_split, dataframe_records, instances or inputs."""
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object")
    formats = [
        k for k in ("dataframe_split", "dataframe_records", "instances", "inputs") if k in body
    ]
    if len(formats) != 1:
        raise InputError(
            "expected exactly one of 'dataframe_split', 'dataframe_records', 'instances', 'inputs'"
        )
    key = formats[0]
    value = body[key]
    if key == "dataframe_split":
        return _dataframe_split(value, meta)
    if key == "inputs" and isinstance(value, dict):
        return columns_matrix(value, meta, key)
    if key == "dataframe_records" and not (
        value and isinstance(value, list) and isinstance(value[0], dict)
    ):
        raise InputError("dataframe_records: expected a non-empty list of objects")
    return rows_matrix(value, meta, key)


def _dataframe_split(value: Any, meta: ModelMeta) -> Matrix:
    if not isinstance(value, dict) or "data" not in value:
        raise InputError("dataframe_split: expected an object with 'data' (and 'columns')")
    columns = value.get("columns")
    if columns is None:
        return rows_matrix(value["data"], meta, "dataframe_split.data")
    if not isinstance(columns, list) or sorted(map(str, columns)) != sorted(meta.feature_names):
        raise InputError(
            f"dataframe_split.columns: must be exactly the features {list(meta.feature_names)}"
        )
    order = [columns.index(n) for n in meta.feature_names]
    data = value["data"]
    if not isinstance(data, list) or not data:
        raise InputError("dataframe_split.data: expected a non-empty list of rows")
    arr = _numbers(data, "dataframe_split.data")
    if arr.ndim != 2 or arr.shape[1] != len(columns):
        raise InputError(f"dataframe_split.data: each row must have {len(columns)} values")
    return arr[:, order].astype(np.float32)


def encode_predictions(
    meta: ModelMeta, label: npt.NDArray[np.int64], proba: npt.NDArray[np.float32]
) -> bytes:
    """`{"predictions": P(positive class) per row, "probabilities": per-class rows, "labels": ...}`.

    `predictions` carries the positive-class probability, as KServe's XGBoost server does for
    a binary:logistic model; the extra keys are ignored by V1 and MLflow clients.
    """
    return orjson.dumps(
        {
            "predictions": np.ascontiguousarray(proba[:, meta.positive_class]),
            "probabilities": proba,
            "labels": [meta.class_labels[i] for i in label.tolist()],
        },
        option=_NUMPY,
    )
