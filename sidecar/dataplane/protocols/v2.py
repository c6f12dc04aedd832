"""Open Inference Protocol V2: `POST /v2/models/{name}[/versions/{v}]/infer`.

Tensors are row-major: a tensor of shape [N, F] is N rows of F features; a
set of tensors of shape [N] or [N, 1] is one feature per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.dataplane.protocols.base import (
    Parsed,
    ParseError,
    Row,
    argmax,
    as_probabilities,
    check_rows,
    checked_shape,
    names_for,
)

NAME = "v2"
_DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BF16",
        "BYTES",
    }
)
_PROB_HINTS = ("prob", "proba", "score")
_LABEL_HINTS = ("label", "predict", "class", "output")


# Deeper than any tensor a model takes (numpy allows 64 dimensions); a bound, so nested
# data cannot run the flattening into Python's recursion limit.
MAX_DEPTH = 32


def _flat(value: Any) -> list[Any]:
    """Row-major nested lists, flattened one level at a time (no recursion)."""
    if not isinstance(value, list):
        raise ParseError("tensor 'data' must be a list")
    data: list[Any] = value
    depth = 1
    while data and type(data[0]) is list:
        depth += 1
        if depth > MAX_DEPTH:
            raise ParseError(f"tensor 'data' nested deeper than {MAX_DEPTH}")
        out: list[Any] = []
        for v in data:
            if type(v) is not list:
                raise ParseError("tensor 'data' mixes lists and values at one depth")
            out.extend(v)
        data = out
    return data


def tensor(t: Any) -> tuple[str, list[int], list[Any]]:
    """Validate one tensor; return (name, shape, flat data)."""
    if not isinstance(t, dict):
        raise ParseError("each tensor must be a JSON object")
    name, dtype = t.get("name"), t.get("datatype")
    if not isinstance(name, str):
        raise ParseError("tensor has no 'name'")
    shape, size = checked_shape(name, t.get("shape"))
    if dtype is not None and dtype not in _DATATYPES:
        raise ParseError(f"tensor {name!r}: unknown datatype {dtype!r}")
    if len(shape) > MAX_DEPTH:
        raise ParseError(f"tensor {name!r}: more than {MAX_DEPTH} dimensions")
    # An empty tensor is no rows to record; its shape could still declare millions of
    # them ([2000000, 0]), which must not be allocated.
    if size == 0:
        raise ParseError(f"tensor {name!r}: shape {shape} holds no values")
    data = _flat(t.get("data"))
    if size != len(data):
        raise ParseError(f"tensor {name!r}: shape {shape} needs {size} values, got {len(data)}")
    return name, shape, data


def _rows_of(shape: list[int], data: list[Any]) -> list[list[Any]]:
    if not shape:
        return [data]
    n = shape[0]
    if n == 1:
        return [data]
    width = len(data) // n if n else 0
    return [data[i * width : (i + 1) * width] for i in range(n)]


def features_of(inputs: Any, configured: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    if not isinstance(inputs, list) or not inputs:
        raise ParseError("'inputs' must be a non-empty list of tensors")
    tensors = [tensor(t) for t in inputs]
    if len(tensors) == 1:
        _, shape, data = tensors[0]
        rows = _rows_of(shape, data)
        width = len(rows[0]) if rows else 0
        return names_for(width, configured), rows
    # One tensor per feature, each [N] or [N, 1]: the rows are the zipped columns.
    n = tensors[0][1][0] if tensors[0][1] else 1
    for name, shape, data in tensors:
        if (shape[0] if shape else 1) != n or len(data) != n:
            raise ParseError(f"tensor {name!r}: per-feature tensors must all be [N] or [N, 1]")
    names = [t[0] for t in tensors]
    if configured and set(configured) == set(names):
        order = {name: i for i, name in enumerate(names)}
        tensors = [tensors[order[c]] for c in configured]
        names = list(configured)
    return names, [list(col) for col in zip(*(t[2] for t in tensors), strict=True)]


def _pick(outputs: list[tuple[str, list[int], list[Any]]], hints: tuple[str, ...]) -> int | None:
    for i, (name, _, _) in enumerate(outputs):
        low = name.lower()
        for h in hints:
            if h in low:
                return i
    return None


# Which output holds the probabilities and which the label, by the outputs' names: a
# model answers with the same names every time, so the name search runs once per layout.
# Bounded as the call cache is: cleared when full, so a stream of new names cannot grow it.
_LAYOUTS: dict[tuple[str, ...], tuple[int | None, int | None]] = {}
_LAYOUT_CACHE = 64
_LAYOUT_NAMES = 8


def _layout(outputs: list[tuple[str, list[int], list[Any]]]) -> tuple[int | None, int | None]:
    """(index of the probabilities output, index of the label output) among `outputs`."""
    key = tuple(o[0] for o in outputs)
    found = _LAYOUTS.get(key)
    if found is not None:
        return found
    p_i = _pick(outputs, _PROB_HINTS)
    rest = [i for i in range(len(outputs)) if i != p_i]
    l_i = _pick([outputs[i] for i in rest], _LABEL_HINTS)
    label_i = rest[l_i] if l_i is not None else (rest[0] if rest else None)
    found = (p_i, label_i)
    if len(key) <= _LAYOUT_NAMES:
        if len(_LAYOUTS) >= _LAYOUT_CACHE:
            _LAYOUTS.clear()
        _LAYOUTS[key] = found
    return found


def predictions_of(response: Any, n: int, labels: Sequence[str]) -> list[Row]:
    if not isinstance(response, dict) or not isinstance(response.get("outputs"), list):
        raise ParseError("response has no 'outputs' list")
    outputs = [tensor(t) for t in response["outputs"]]
    if not outputs:
        raise ParseError("response has no output tensors")
    p_i, label_i = _layout(outputs)
    label_out = outputs[label_i] if label_i is not None else None
    prob_rows = None
    if p_i is not None:
        _, shape, data = outputs[p_i]
        check_rows(n, shape[0] if shape else 1)
        prob_rows = _rows_of(shape, data)
    label_rows = None
    if label_out is not None:
        _, shape, data = label_out
        check_rows(n, shape[0] if shape else 1)
        label_rows = _rows_of(shape, data)
    rows = []
    for i in range(n):
        probs = as_probabilities(prob_rows[i]) if prob_rows is not None else None
        if label_rows is not None:
            lab = label_rows[i]
            pred: Any = lab[0] if len(lab) == 1 else lab
        elif probs is not None:
            idx = argmax(probs)
            pred = labels[idx] if idx < len(labels) else idx
        else:
            pred = None
        rows.append(Row(None, pred, probs, max(probs) if probs else None))
    return rows


def parse(request: Any, response: Any, configured: Sequence[str], labels: Sequence[str]) -> Parsed:
    if not isinstance(request, dict):
        raise ParseError("request body is not a JSON object")
    names, feats = features_of(request.get("inputs"), configured)
    rows = predictions_of(response, len(feats), labels)
    for row, f in zip(rows, feats, strict=True):
        row.features = f
    return Parsed(names, rows)
