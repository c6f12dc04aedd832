"""What every protocol adapter produces: rows of (features, prediction, probabilities, confidence)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ParseError(ValueError):
    """A recognised inference call whose body could not be understood; it is still forwarded."""


@dataclass(slots=True)
class Row:
    features: list[Any] | None
    prediction: Any
    probabilities: list[float] | None
    confidence: float | None


@dataclass(slots=True)
class Parsed:
    feature_names: list[str] | None
    rows: list[Row]


def confidence_of(probabilities: list[float] | None) -> float | None:
    if not probabilities:
        return None
    return max(probabilities)


def as_probabilities(value: Any) -> list[float] | None:
    """A list of class probabilities, or a single positive-class probability, as a probability list."""
    if isinstance(value, list) and value:
        probs = []
        for v in value:
            # _is_num inlined: this runs for every row of every call.
            t = type(v)
            if not ((t is float and v == v) or t is int):
                return None
            p = float(v)
            if not 0.0 <= p <= 1.0:
                return None
            probs.append(p)
        if len(probs) == 1:
            return [1.0 - probs[0], probs[0]]
        return probs if abs(sum(probs) - 1.0) < 1e-3 else None
    if _is_num(value):
        p = float(value)
        return [1.0 - p, p] if 0.0 <= p <= 1.0 else None
    return None


def _is_num(v: Any) -> bool:
    t = type(v)
    # type() rather than isinstance: bool is an int subclass and must not count.
    return (t is float and v == v) or t is int


def argmax(values: Sequence[float]) -> int:
    best = 0
    for i in range(1, len(values)):
        if values[i] > values[best]:
            best = i
    return best


def row_from_record(record: dict[str, Any], names: list[str]) -> list[Any]:
    return [record.get(n) for n in names]


# Default names are cached per row width (clients send the same few widths), bounded in
# bytes: once NAMES_CACHE_BYTES are held, other widths get a list built for the call, so
# calls of ever new, very wide rows cannot grow it. Every row of a call shares its list.
NAMES_CACHE_BYTES = 1 << 20
# What one cached name costs: its str (~53 bytes for "f123") and its list slot.
_NAME_BYTES = 64
_default_names: dict[int, list[str]] = {}
_cached_bytes = [0]


def names_for(width: int, configured: Sequence[str]) -> list[str]:
    """The configured names when they fit, else f0, f1, ... (shared lists: never mutate them)."""
    if len(configured) == width:
        return configured if isinstance(configured, list) else list(configured)
    names = _default_names.get(width)
    if names is None:
        names = [f"f{i}" for i in range(width)]
        cost = width * _NAME_BYTES
        if _cached_bytes[0] + cost <= NAMES_CACHE_BYTES:
            _default_names[width] = names
            _cached_bytes[0] += cost
    return names


def names_cache_bytes() -> int:
    """What the default-name cache holds, as counted against NAMES_CACHE_BYTES."""
    return _cached_bytes[0]


def interpret_prediction(item: Any, labels: Sequence[str]) -> Row:
    """One row of a V1/MLflow `predictions` list: a label, a score, class probabilities, or a dict."""
    if isinstance(item, dict):
        probs = None
        for key in ("probabilities", "probability", "predict_proba", "scores", "proba"):
            if key in item:
                probs = as_probabilities(item[key])
                break
        pred = item.get("label", item.get("prediction", item.get("predicted_label")))
        if pred is None and probs is not None:
            idx = argmax(probs)
            pred = labels[idx] if idx < len(labels) else idx
        return Row(None, pred, probs, confidence_of(probs))
    if isinstance(item, list):
        probs = as_probabilities(item)
        if probs is not None:
            idx = argmax(probs)
            return Row(None, labels[idx] if idx < len(labels) else idx, probs, max(probs))
        return Row(None, item, None, None)
    if isinstance(item, float) and 0.0 < item < 1.0:
        # A fractional score in (0, 1) is read as the positive-class probability.
        probs = [1.0 - item, item]
        return Row(None, item, probs, max(probs))
    return Row(None, item, None, None)


# How deep a row's values or a prediction may nest (an image row is three or four deep).
# orjson writes at most 254 levels: a decision holding deeper values could not be
# recorded or published, and would fail the background stage for its whole batch.
MAX_NESTING = 32
_CONTAINERS = (list, dict)


def check_nesting(value: Any) -> None:
    """ParseError when `value` (a row or a prediction) nests deeper than MAX_NESTING."""
    t = type(value)
    if t is list:
        # The common case, a flat row, settled by one C-level pass over the value types.
        types = set(map(type, value))
        if list not in types and dict not in types:
            return
    elif t is not dict:
        return
    # Iterative, level by level: nothing here may recurse as deep as the client nests.
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_NESTING:
            raise ParseError(f"values nested deeper than {MAX_NESTING}")
        below: list[Any] = []
        for v in level:
            for x in v.values() if type(v) is dict else v:
                if type(x) in _CONTAINERS:
                    below.append(x)
        level = below


def rows_from_predictions(
    features: list[Any], predictions: list[Any], labels: Sequence[str]
) -> list[Row]:
    """Pair each row's features with its entry of a `predictions` list (V1, MLflow)."""
    check_rows(len(features), len(predictions))
    rows = []
    for f, p in zip(features, predictions, strict=True):
        check_nesting(f)
        check_nesting(p)
        row = interpret_prediction(p, labels)
        row.features = f
        rows.append(row)
    return rows


def check_rows(rows: int, predictions: int) -> None:
    if rows != predictions:
        raise ParseError(f"request has {rows} rows but the response {predictions} predictions")


def checked_shape(name: object, shape: object) -> tuple[list[int], int]:
    """A V2 tensor's `shape` (the JSON body's and the binary extension's) and the number of
    values it holds; ParseError unless it is a list of non-negative integers."""
    if not isinstance(shape, list):
        raise ParseError(f"tensor {name!r}: 'shape' must be a list of non-negative integers")
    size = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise ParseError(f"tensor {name!r}: 'shape' must be a list of non-negative integers")
        size *= d
    return shape, size
