"""Contests: the person's statement, corrected values, and the model's answer for them.

Corrected values are scored through the proxy itself, in the protocol of the
contested decision, so the answer is an ordinary recorded decision (with its own
id, explanation and events). It is linked to the original by its client request
id, `contest:{original decision id}` (`GET /decisions?request_id=contest:ID`
lists it), and the contest keeps its decision id.
"""

from __future__ import annotations

import http.client
import math
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sidecar.dataplane.protocols.base import ParseError, interpret_prediction
from sidecar.dataplane.protocols.v2 import predictions_of

LINK_PREFIX = "contest:"
NOT_RESCORED = (
    "no proxy is configured for this model (hub.models.<model>.proxy_url): the corrected"
    " values were recorded, not scored"
)

# The data plane through which a decision's corrected values are scored, or None where none is.
ProxyFor = Callable[[dict[str, Any]], str | None]


class ContestIn(BaseModel):
    """The body of POST /decisions/{id}/contest."""

    model_config = ConfigDict(extra="forbid")

    statement: str = Field(min_length=1)
    """Why the person thinks the decision is wrong, in their words."""
    corrected_values: dict[str, float | None] | None = None
    """Feature name -> the value the person says is right (null: not known)."""


def corrected_row(
    features: Sequence[Any], names: Sequence[str], corrected: dict[str, float | None]
) -> list[float | None]:
    """The decision's features with the corrections laid over them; ValueError names a bad one."""
    row: list[float | None] = list(features)
    for name, value in corrected.items():
        if name not in names:
            raise ValueError(f"corrected_values: {name!r} is not a feature of the model")
        if value is not None and not math.isfinite(value):
            raise ValueError(f"corrected_values: {name} must be a finite number or null")
        row[list(names).index(name)] = value
    return row


def _request(
    decision: dict[str, Any], names: Sequence[str], row: list[float | None], input_name: str
) -> tuple[str, bytes]:
    model = quote(str(decision.get("model_name") or "model"), safe="")
    protocol = decision.get("protocol")
    if protocol == "kserve_v1":
        return f"/v1/models/{model}:predict", orjson.dumps({"instances": [row]})
    if protocol == "mlflow":
        body = {"dataframe_split": {"columns": list(names), "data": [row]}}
        return "/invocations", orjson.dumps(body)
    version = decision.get("model_version")
    path = f"/v2/models/{model}" + (f"/versions/{quote(str(version), safe='')}" if version else "")
    tensor = {"name": input_name, "shape": [1, len(row)], "datatype": "FP32", "data": row}
    return path + "/infer", orjson.dumps({"inputs": [tensor]})


def _prediction(protocol: Any, body: Any, labels: Sequence[str]) -> tuple[Any, list[float] | None]:
    if protocol not in ("kserve_v1", "mlflow"):
        (row,) = predictions_of(body, 1, labels)
        return row.prediction, row.probabilities
    preds = body.get("predictions") if isinstance(body, dict) else body
    if not isinstance(preds, list) or len(preds) != 1:
        raise ParseError("the answer has no single prediction")
    got = interpret_prediction(preds[0], labels)
    return got.prediction, got.probabilities


def not_rescored(decision: dict[str, Any], row: list[float | None]) -> dict[str, Any]:
    """The contest's record of corrections that were not scored (no proxy to score them)."""
    return {
        "request_id": None,
        "features": row,
        "decision_id": None,
        "status": None,
        "prediction": None,
        "probabilities": None,
        "error": NOT_RESCORED.replace("<model>", str(decision.get("model_name") or "model")),
    }


def rescore(
    proxy_url: str,
    decision: dict[str, Any],
    row: list[float | None],
    *,
    names: Sequence[str],
    labels: Sequence[str],
    input_name: str,
    explain_header: str,
    timeout_s: float,
) -> dict[str, Any]:
    """Send the corrected row through the proxy; what the model answered, or why there is no answer."""
    link = LINK_PREFIX + str(decision["decision_id"])
    path, body = _request(decision, names, row, input_name)
    out: dict[str, Any] = {"request_id": link, "features": row, "decision_id": None}
    target = urlsplit(proxy_url)
    conn = http.client.HTTPConnection(
        target.hostname or "127.0.0.1", target.port, timeout=timeout_s
    )
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "content-type": "application/json",
                "x-request-id": link,
                # Explained at once: the reviewer compares it with the original's explanation.
                explain_header: "1",
            },
        )
        resp = conn.getresponse()
        raw = resp.read()
        out["status"] = resp.status
        call = resp.getheader("x-decision-id")
        if call:
            out["decision_id"] = f"{call}/0"
        if resp.status != 200:
            out["error"] = f"the model server answered {resp.status}"
            return out
        prediction, probabilities = _prediction(decision.get("protocol"), orjson.loads(raw), labels)
    except (OSError, http.client.HTTPException) as exc:
        out["error"] = f"the proxy could not be reached: {exc}"
        return out
    except (ValueError, ParseError) as exc:
        out["error"] = f"the answer could not be read: {exc}"
        return out
    finally:
        conn.close()
    if (
        isinstance(prediction, int)
        and not isinstance(prediction, bool)
        and 0 <= prediction < len(labels)
    ):
        prediction = labels[prediction]
    out["prediction"] = prediction
    out["probabilities"] = probabilities
    out["error"] = None
    return out
