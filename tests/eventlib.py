"""Helpers shared by the events tests (tests/sinks, tests/kafka): schema checks, sample decisions."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema

from sidecar.decisions import Decision


def schema_for(event_type: str) -> dict[str, Any]:
    text = resources.files("sidecar.schemas").joinpath(f"{event_type}.v1.json").read_text()
    return dict(json.loads(text))


def validate_event(body: dict[str, Any]) -> None:
    """Check an event body against the JSON Schema of its type (round-tripped through JSON)."""
    data = json.loads(json.dumps(body))
    jsonschema.Draft202012Validator(
        schema_for(data["event_type"]), format_checker=jsonschema.FormatChecker()
    ).validate(data)


def make_decision(i: int = 0, **kw: Any) -> Decision:
    fields: dict[str, Any] = {
        "call_id": f"req{i:06d}",
        "row": 0,
        "time": 1795392000.0 + i,
        "protocol": "v2",
        "model_name": "credit",
        "model_version": "3",
        "features": [35.0, 52000.0, 0.31, i],
        "feature_names": ["age", "income", "debt_ratio", "n"],
        "prediction": 1,
        "probabilities": [0.2, 0.8],
        "confidence": 0.8,
        "upstream_status": 200,
        "upstream_latency_ms": 1.25,
        "group_attributes": {"gender": "F"},
    }
    fields.update(kw)
    return Decision(**fields)
