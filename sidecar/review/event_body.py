"""Review audit records as `sidecar.reviews` events.

The audit chain records finer steps than the event schema names; they map
as: requested and contested -> requested (the reason says which); claimed and renewed -> claimed; released and
lease_expired -> released (reason says which); approved and overridden ->
decided, with the verdict (`approve` or `override`), the reason prefixed by it
("override: ...") and the outcome the final answer (JSON text unless it is a string).
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.review.audit import AuditRecord
from sidecar.sinks import events

SYSTEM_ACTOR = "system"
_ACTIONS: dict[str, events.ReviewAction] = {
    "requested": "requested",
    # A contest asks for a human review again: a review request whose reason is "contested".
    "contested": "requested",
    "claimed": "claimed",
    "renewed": "claimed",
    "released": "released",
    "lease_expired": "released",
    "approved": "decided",
    "overridden": "decided",
}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def review_event_body(rec: AuditRecord) -> dict[str, Any]:
    """The event body for one audit record."""
    action = _ACTIONS[rec.action]
    reason: str | None
    outcome = None
    verdict: events.Verdict | None = None
    if rec.action in ("requested", "contested"):
        reason = rec.data.get("reason")
    elif action == "decided":
        verdict = "approve" if rec.action == "approved" else "override"
        reason = f"{verdict}: {rec.data.get('reason', '')}"
        outcome = _text(rec.data.get("outcome"))
    else:
        reason = rec.action
    return events.review_event(
        decision_id=rec.decision_id,
        action=action,
        reason=reason,
        reviewer=None if rec.actor == SYSTEM_ACTOR else rec.actor,
        outcome=outcome,
        previous_audit_hash=rec.prev_hash,
        time=rec.time,
        audit_hash=rec.hash,
        verdict=verdict,
    )
