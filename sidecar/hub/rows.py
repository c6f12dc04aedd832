"""Kafka messages as the rows the hub writes: parsed once, checked, grouped by table.

A message that is not a well-formed event of its topic is counted and skipped,
never retried: a poison message must not stall a partition for the fleet.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
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
    # Hold mode: the event's `held` field (`sidecar.review.held`), the answer the client awaits.
    held: Any = None


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


# A UUID as PostgreSQL prints one: the sidecar's form. Checked by pattern (a tenth of
# uuid.UUID's cost), so the writer can sort rows in the index's order by the string.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _event_id(value: Any) -> str:
    """The event id in canonical form; ValueError for what is not a UUID (a poison id must
    not fail the batch's COPY)."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a UUID string")
    return str(uuid.UUID(value))


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
        event_id = _event_id(body["event_id"])
        time = _text(body["time"])
        day = _day(time)
        _epoch(time)
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
                    ReviewRequest(
                        decision_id,
                        str(body.get("reason") or "requested"),
                        _epoch(time),
                        body.get("held"),
                    )
                )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, orjson.JSONDecodeError):
        rows.invalid += 1
        return
    if kind != "review":
        rows.days.add(day)


# Messages go to the database as they came (`Raw`), one CSV line each, `kind` DELIM value:
# with these two control characters as delimiter and quote, a JSON text without raw line
# breaks passes verbatim (JSON escapes every control character inside its strings).
RAW_DELIMITER = b"\x02"
RAW_QUOTE = b"\x01"
KIND_CODES = {"decision": "d", "explanation": "e", "review": "r"}
KINDS_OF_CODES = {v: k for k, v in KIND_CODES.items()}


@dataclass(slots=True)
class Raw:
    """One poll's messages, undecoded: the database parses and checks them (`Writer.write_raw`).

    A message that could not pass verbatim (a raw line break or one of the two control
    characters, an empty or missing value) marks the batch for the Python path (`rows`),
    which decodes each message here and counts the bad ones.
    """

    messages: list[tuple[str, list[bytes | None]]] = field(default_factory=list)
    copyable: bool = True
    count: int = 0

    def extend(self, kind: str, values: list[bytes | None]) -> None:
        self.messages.append((kind, values))
        self.count += len(values)
        if self.copyable:
            for v in values:
                if (
                    not v
                    or b"\n" in v
                    or b"\r" in v
                    or RAW_DELIMITER in v
                    or RAW_QUOTE in v
                    or b"\x00" in v
                ):
                    self.copyable = False
                    return

    def copy_data(self) -> bytes:
        """The COPY ... (FORMAT csv) payload: a line per message."""
        out = []
        for kind, values in self.messages:
            if not values:
                continue
            head = KIND_CODES[kind].encode() + RAW_DELIMITER
            out.append(head + (b"\n" + head).join(values) + b"\n")  # type: ignore[arg-type]
        return b"".join(out)

    def rows(self) -> Rows:
        """The batch decoded in Python, for the path that does not go through COPY verbatim."""
        rows = Rows()
        for kind, values in self.messages:
            for v in values:
                add(rows, kind, v)
        return rows
