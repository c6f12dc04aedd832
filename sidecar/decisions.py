"""The decision: one row of one recognised inference call.

A request gets one id (`x-decision-id`, the incoming `x-request-id` when it
is safe to reuse); row `i` of it is the decision `{id}/{i}`.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")


# 128 bits from a generator seeded once from the OS: ids stay unique without a
# getrandom() syscall per request (that showed in the per-request CPU). They are
# not secrets: every lookup by id needs a control-plane token.
_ids = random.Random(os.urandom(32))


def new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


def accept_request_id(value: str | None) -> str:
    """Honour a client's `x-request-id` when it is a safe token, else mint one."""
    if value and _SAFE_ID.match(value):
        return value
    return new_request_id()


def decision_id(request_id: str, row: int) -> str:
    return f"{request_id}/{row}"


def split_decision_id(value: str) -> tuple[str, int]:
    """`R/i` -> (R, i); a bare `R` means its first row."""
    rid, sep, row = value.rpartition("/")
    if sep and row.isdigit():
        return rid, int(row)
    return value, 0


@dataclass(slots=True)
class Decision:
    """What the sidecar knows about one row after the upstream answered."""

    request_id: str
    row: int
    time: float  # unix seconds, when the request arrived
    protocol: str  # "kserve_v1" | "v2" | "mlflow"
    model_name: str
    model_version: str | None
    features: list[Any] | None  # the row's feature values in the model's feature order
    feature_names: list[str] | None
    prediction: Any
    probabilities: list[float] | None
    confidence: float | None
    upstream_status: int
    upstream_latency_ms: float
    group_attributes: dict[str, str] = field(default_factory=dict)
    # Set on the hot path by the review router.
    review: str | None = None  # None | "queued" | "held"
    review_reason: str | None = None
    # Set by the sampler.
    sampled: bool = False
    sample_reason: str | None = None
    explain_requested: bool = False

    @property
    def decision_id(self) -> str:
        return f"{self.request_id}/{self.row}"
