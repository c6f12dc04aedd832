"""Kafka messages as the rows the hub writes: parsed once, checked, grouped by table.

A message that is not a well-formed event of its topic is counted and skipped,
never retried: a poison message must not stall a partition for the fleet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson

DecisionRow = tuple[str, str, str, str | None, str, str | None, str, str]
ExplanationRow = tuple[str, str, str, str]
ReviewEventRow = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """A sidecar in `review.store = "hub"` asks for a decision to be reviewed at the hub."""

    decision_id: str
    reason: str
    time: float


@dataclass(slots=True)
class Rows:
    """One poll's events, by table."""

    decisions: list[DecisionRow] = field(default_factory=list)
    explanations: list[ExplanationRow] = field(default_factory=list)
    review_events: list[ReviewEventRow] = field(default_factory=list)
    requests: list[ReviewRequest] = field(default_factory=list)
    days: set[dt.date] = field(default_factory=set)
    invalid: int = 0

    def __len__(self) -> int:
        return len(self.decisions) + len(self.explanations) + len(self.review_events)


def _day(time: str) -> dt.date:
    # Event times are RFC 3339 in UTC ("2026-11-30T05:10:00.000001Z"): the date leads.
    return dt.date.fromisoformat(time[:10])


def _epoch(time: str) -> float:
    return dt.datetime.fromisoformat(time.replace("Z", "+00:00")).timestamp()


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def add(rows: Rows, kind: str, value: bytes | None) -> None:
    """Parse one message of topic kind `kind` into `rows` (counted as invalid when it is not one)."""
    try:
        body = orjson.loads(value or b"")
        if not isinstance(body, dict) or body.get("event_type") != kind:
            raise ValueError(f"not a {kind} event")
        event_id = _text(body["event_id"])
        time = _text(body["time"])
        day = _day(time)
        decision_id = _text(body["decision_id"])
        text = value.decode() if value is not None else ""
        if kind == "decision":
            groups = body.get("group_attributes") or {}
            rows.decisions.append(
                (
                    event_id,
                    time,
                    decision_id,
                    body.get("request_id"),
                    _text(body["model_name"]),
                    body.get("model_version"),
                    orjson.dumps(groups).decode(),
                    text,
                )
            )
        elif kind == "explanation":
            rows.explanations.append((event_id, time, decision_id, text))
        else:
            rows.review_events.append((event_id, time, decision_id, text))
            # A request without an audit hash comes from a sidecar that keeps no chain
            # (review.store = "hub"): the hub's queue takes it. Local-mode steps are kept
            # as events only.
            if body.get("action") == "requested" and body.get("audit_hash") is None:
                rows.requests.append(
                    ReviewRequest(decision_id, str(body.get("reason") or "requested"), _epoch(time))
                )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, orjson.JSONDecodeError):
        rows.invalid += 1
        return
    if kind != "review":
        rows.days.add(day)
