"""Recognising inference calls by method and path; each adapter parses one protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.dataplane.protocols import kserve_v1, mlflow, v2
from sidecar.dataplane.protocols.base import Parsed, ParseError, Row

__all__ = ["Call", "ParseError", "Parsed", "Row", "recognise"]

ParseFn = Callable[[Any, Any, Sequence[str], Sequence[str]], Parsed]


@dataclass(frozen=True, slots=True)
class Call:
    """A recognised inference call: which protocol, which model."""

    protocol: str
    model_name: str
    model_version: str | None
    parse: ParseFn


def recognise(method: str, path: str, mlflow_model: str) -> Call | None:
    """The inference call this request is, or None (then it is forwarded without parsing)."""
    if method != "POST":
        return None
    if path.startswith("/v2/models/"):
        parts = path[len("/v2/models/") :].split("/")
        # name/infer  or  name/versions/v/infer
        if len(parts) == 2 and parts[1] == "infer" and parts[0]:
            return Call(v2.NAME, parts[0], None, v2.parse)
        if len(parts) == 4 and parts[1] == "versions" and parts[3] == "infer" and parts[0]:
            return Call(v2.NAME, parts[0], parts[2] or None, v2.parse)
        return None
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        name = path[len("/v1/models/") : -len(":predict")]
        if name and "/" not in name:
            return Call(kserve_v1.NAME, name, None, kserve_v1.parse)
        return None
    if path == "/invocations":
        return Call(mlflow.NAME, mlflow_model, None, mlflow.parse)
    return None
