"""What an outcome must be: a decision id, a value, the time it was observed.

Shared by `POST /outcomes` and `sidecar outcomes load`, so both refuse the same
things with the same words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sidecar.sinks.events import OutcomeValue

FIELDS = ("decision_id", "outcome", "observed_at")
MAX_DECISION_ID_CHARS = 256
MAX_OUTCOME_CHARS = 256
# `<call id>/<row>`, as the sidecar mints them (visible ASCII): an id without its row
# (the x-decision-id header alone) would never join to a decision event.
_DECISION_ID = re.compile(r"[!-~]+/\d{1,9}\Z")
# RFC 3339 section 5.6: a full date, a full time, and an offset (Z or +hh:mm).
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")

Check = Literal["new", "duplicate", "conflict"]


class InvalidOutcome(ValueError):
    """Why an outcome was refused (the message is shown to whoever sent it)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    decision_id: str
    outcome: OutcomeValue
    observed_at: str  # RFC 3339, UTC, microseconds: as every event's times


def rfc3339_utc(value: object) -> str:
    """An RFC 3339 string (any offset) or an aware datetime, as UTC with microseconds."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        m = _RFC3339.match(value.strip())
        if m is None:
            raise InvalidOutcome(
                "observed_at must be an RFC 3339 time with an offset, e.g. 2026-11-30T09:15:00Z"
            )
        date, clock, frac, offset = m.groups()
        frac = (frac or "0")[:6].ljust(6, "0")  # nanoseconds are cut to microseconds
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            when = datetime.fromisoformat(f"{date}T{clock}.{frac}{offset}")
        except ValueError as exc:
            raise InvalidOutcome(f"observed_at is not a valid time: {exc}") from None
    else:
        raise InvalidOutcome("observed_at must be an RFC 3339 string")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidOutcome("observed_at has no time zone offset")
    try:
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, ValueError):
        raise InvalidOutcome("observed_at is out of range") from None


class OutcomeRules:
    """Checks outcomes against the model's class labels (built once from `model.class_labels`)."""

    def __init__(self, class_labels: Sequence[str]) -> None:
        self.labels = frozenset(class_labels)
        self._listed = ", ".join(class_labels)

    def value(self, raw: object) -> OutcomeValue:
        """A class label (one of `model.class_labels` when configured), or a finite number."""
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise InvalidOutcome("outcome must be a class label (string) or a number")
        if self.labels:
            if not isinstance(raw, str) or raw not in self.labels:
                raise InvalidOutcome(
                    f"outcome {raw!r} is not one of model.class_labels: {self._listed}"
                )
            return raw
        if isinstance(raw, str):
            if not raw or len(raw) > MAX_OUTCOME_CHARS:
                raise InvalidOutcome(f"outcome must be 1 to {MAX_OUTCOME_CHARS} characters")
            return raw
        if not math.isfinite(raw):
            raise InvalidOutcome("outcome must be a finite number")
        return raw

    def value_from_text(self, text: str) -> OutcomeValue:
        """A CSV cell: a label when labels are configured; otherwise a number when it reads as one."""
        if not self.labels and _NUMBER.match(text.strip()):
            number = float(text)
            is_int = number.is_integer() and "." not in text and "e" not in text.lower()
            return self.value(int(text) if is_int else number)
        return self.value(text)

    def check(self, decision_id: object, outcome: object, observed_at: object) -> Outcome:
        if (
            not isinstance(decision_id, str)
            or len(decision_id) > MAX_DECISION_ID_CHARS
            or not _DECISION_ID.match(decision_id)
        ):
            raise InvalidOutcome(
                f"decision_id must be '<call id>/<row>' in visible ASCII, at most "
                f"{MAX_DECISION_ID_CHARS} characters"
            )
        return Outcome(decision_id, self.value(outcome), rfc3339_utc(observed_at))

    def check_item(self, item: object) -> Outcome:
        """One item of a POST /outcomes batch: exactly the three fields."""
        if not isinstance(item, Mapping):
            raise InvalidOutcome(
                "each outcome must be an object {decision_id, outcome, observed_at}"
            )
        missing = [f for f in FIELDS if f not in item]
        if missing:
            raise InvalidOutcome(f"missing {', '.join(missing)}")
        extra = sorted(str(k) for k in item if k not in FIELDS)
        if extra:
            raise InvalidOutcome(f"unknown field(s) {', '.join(extra[:5])}")
        return self.check(item["decision_id"], item["outcome"], item["observed_at"])


class Seen:
    """The outcomes of one batch (or file) so far, by decision id: the first one counts."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def add(self, o: Outcome) -> Check:
        """new; duplicate (the same outcome again); conflict (another outcome for the decision)."""
        if o.decision_id not in self._values:
            self._values[o.decision_id] = o.outcome
            return "new"
        return "duplicate" if self._values[o.decision_id] == o.outcome else "conflict"
