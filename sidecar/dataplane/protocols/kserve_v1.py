"""KServe V1: `POST /v1/models/{name}:predict` with `instances` or `inputs`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.dataplane.protocols.base import (
    Parsed,
    ParseError,
    names_for,
    row_from_record,
    rows_from_predictions,
)

NAME = "kserve_v1"


def features_of(
    instances: Any, configured: Sequence[str]
) -> tuple[list[str] | None, list[list[Any] | None]]:
    if not isinstance(instances, list):
        raise ParseError("'instances' must be a list")
    if not instances:
        return None, []
    first = instances[0]
    if isinstance(first, dict):
        names = list(configured) if configured else list(first)
        return names, [
            row_from_record(r, names) if isinstance(r, dict) else None for r in instances
        ]
    if isinstance(first, list):
        return names_for(len(first), configured), [
            r if isinstance(r, list) else None for r in instances
        ]
    # A list of scalars is one feature per row.
    return names_for(1, configured), [[v] for v in instances]


def parse(request: Any, response: Any, configured: Sequence[str], labels: Sequence[str]) -> Parsed:
    if not isinstance(request, dict):
        raise ParseError("request body is not a JSON object")
    instances = request.get("instances", request.get("inputs"))
    if instances is None:
        raise ParseError("request has neither 'instances' nor 'inputs'")
    names, feats = features_of(instances, configured)
    if not isinstance(response, dict) or not isinstance(response.get("predictions"), list):
        raise ParseError("response has no 'predictions' list")
    return Parsed(names, rows_from_predictions(feats, response["predictions"], labels))
