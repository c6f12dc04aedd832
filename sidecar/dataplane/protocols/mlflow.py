"""MLflow scoring server: `POST /invocations` (dataframe_split, dataframe_records, instances, inputs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.dataplane.protocols import kserve_v1
from sidecar.dataplane.protocols.base import (
    Parsed,
    ParseError,
    row_from_record,
    rows_from_predictions,
)

NAME = "mlflow"


def _split(frame: Any, configured: Sequence[str]) -> tuple[list[str] | None, list[Any]]:
    if not isinstance(frame, dict) or not isinstance(frame.get("data"), list):
        raise ParseError("'dataframe_split' needs a 'data' list")
    cols = frame.get("columns")
    data = frame["data"]
    if cols is None:
        return kserve_v1.features_of(data, configured)
    if not isinstance(cols, list):
        raise ParseError("'dataframe_split.columns' must be a list")
    names = [str(c) for c in cols]
    if configured and set(configured) <= set(names):
        idx = [names.index(c) for c in configured]
        return list(configured), [
            [r[i] for i in idx] if isinstance(r, list) and len(r) == len(names) else None
            for r in data
        ]
    return names, [r if isinstance(r, list) else None for r in data]


def _records(records: Any, configured: Sequence[str]) -> tuple[list[str] | None, list[Any]]:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ParseError("'dataframe_records' must be a list of objects")
    if not records:
        return None, []
    names = list(configured) if configured else list(records[0])
    return names, [row_from_record(r, names) for r in records]


def _inputs(inputs: Any, configured: Sequence[str]) -> tuple[list[str] | None, list[Any]]:
    if isinstance(inputs, dict):
        # Column-oriented: {"feature": [v0, v1, ...], ...}
        names = list(configured) if configured else list(inputs)
        cols = [inputs.get(n) for n in names]
        if not all(isinstance(c, list) for c in cols):
            raise ParseError("column-oriented 'inputs' must map names to lists")
        return names, [list(r) for r in zip(*cols, strict=False)]
    return kserve_v1.features_of(inputs, configured)


def parse(request: Any, response: Any, configured: Sequence[str], labels: Sequence[str]) -> Parsed:
    if not isinstance(request, dict):
        raise ParseError("request body is not a JSON object")
    if "dataframe_split" in request:
        names, feats = _split(request["dataframe_split"], configured)
    elif "dataframe_records" in request:
        names, feats = _records(request["dataframe_records"], configured)
    elif "instances" in request:
        names, feats = kserve_v1.features_of(request["instances"], configured)
    elif "inputs" in request:
        names, feats = _inputs(request["inputs"], configured)
    else:
        raise ParseError(
            "request has none of dataframe_split, dataframe_records, instances, inputs"
        )
    preds = response.get("predictions") if isinstance(response, dict) else response
    if isinstance(preds, dict):
        # {"predictions": {"label": [...], "probabilities": [...]}} from pyfunc dict outputs
        cols = {k: v for k, v in preds.items() if isinstance(v, list)}
        n = len(next(iter(cols.values()))) if cols else 0
        preds = [{k: v[i] for k, v in cols.items() if i < len(v)} for i in range(n)]
    if not isinstance(preds, list):
        raise ParseError("response has no 'predictions' list")
    return Parsed(names, rows_from_predictions(feats, preds, labels))
