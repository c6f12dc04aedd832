"""`review.store = "hub"`: routed decisions go to the fleet hub's one queue, not to a local file.

The sidecar keeps no queue and no audit chain: `enqueue` publishes a
review-requested event (with no audit hash: no local chain recorded it,
which is how the hub tells it from a local-mode step) and the hub queues
the decision when it consumes the event. Reviewers work at the hub; this
sidecar's review API has nothing to list and refuses transitions with 404
naming where the queue is.

In hold mode the held answer travels in the same event (`sidecar.review.held`,
up to `review.held_max_bytes`); the client's status_url points at the hub
(`review.hub_url`), which shows the verdict and, once approved, the answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.review import audit
from sidecar.review.held import held_field
from sidecar.review.model import (
    Action,
    NoContests,
    NotFound,
    ReviewItem,
    Status,
)
from sidecar.sinks import events
from sidecar.sinks.base import EventSink

log = logging.getLogger("sidecar.review")

_AT_HUB = "review.store = hub: this decision is reviewed at the fleet hub, not on this sidecar"


class HubForwardingStore(NoContests):
    """A `ReviewStore` that only emits review-requested events for the hub."""

    def __init__(
        self, *, sink: EventSink, registry: Registry, held_max_bytes: int = 256 * 1024
    ) -> None:
        self._sink = sink
        self._held_max = held_max_bytes
        self._sent = registry.counter(
            "sidecar_review_enqueued_total", "Decisions added to the review queue"
        )
        self._shed = registry.counter(
            "sidecar_review_events_shed_total", "Review events the sink refused"
        )

    def enqueue(
        self,
        decision: Decision,
        explanation: dict[str, Any] | None = None,
        held_response: bytes | None = None,
        held_headers: list[tuple[bytes, bytes]] | None = None,
        held_status: int | None = None,
    ) -> ReviewItem | None:
        body = events.review_event(
            decision_id=decision.decision_id,
            action="requested",
            reason=decision.review_reason or "requested",
            reviewer=None,
            outcome=None,
            previous_audit_hash=None,
            time=time.time(),
        )
        if held_response is not None:
            body["held"] = held_field(
                held_status or 200, held_headers or [], held_response, self._held_max
            )
        if self._sink.publish("review", decision.decision_id, body):
            self._sent.inc()
        else:
            self._shed.inc()
        return None

    def get(self, item_id: str) -> ReviewItem | None:
        return None

    def list_items(
        self,
        *,
        status: Status | None = None,
        reason: str | None = None,
        model: str | None = None,
        claimed_by: str | None = None,
        after: int = 0,
        limit: int = 50,
    ) -> list[ReviewItem]:
        return []

    def claim(self, item_id: str, reviewer: str) -> ReviewItem:
        raise NotFound(_AT_HUB)

    def release(self, item_id: str, actor: str, *, force: bool = False) -> ReviewItem:
        raise NotFound(_AT_HUB)

    def decide(
        self, item_id: str, reviewer: str, action: Action, outcome: Any, reason: str
    ) -> ReviewItem:
        raise NotFound(_AT_HUB)

    def set_explanation(self, item_id: str, explanation: dict[str, Any]) -> None:
        """The explanation reaches the hub as its own event."""

    def expire_leases(self) -> int:
        return 0

    def counts(self) -> dict[str, int]:
        return {}

    def history(self, item_id: str) -> list[audit.AuditRecord]:
        return []

    def audit_records(self, *, after: int = 0, limit: int = 100) -> list[audit.AuditRecord]:
        return []

    def audit_head(self) -> tuple[int, str]:
        return 0, audit.GENESIS

    def verify(self, expected_head: str | None = None) -> audit.VerifyResult:
        ok = expected_head is None or expected_head == audit.GENESIS
        return audit.VerifyResult(
            ok,
            0,
            0,
            audit.GENESIS,
            None if ok else "this sidecar keeps no audit chain (review.store = hub)",
        )

    def close(self) -> None:
        """Nothing is held."""
