"""What the review queue holds, and the interface every review store implements.

Items move pending -> claimed (a lease) -> decided. The item id is the
decision id (`{call_id}/{row}`). A shared database can implement
`ReviewStore` later; `SqliteReviewStore` is the embedded default.
"""

from __future__ import annotations

import abc
import base64
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.decisions import DECISION_FIELDS, Decision, field_values, split_decision_id
from sidecar.metrics import Counter, Registry
from sidecar.review import audit

Status = Literal["pending", "claimed", "decided"]
Action = Literal["approve", "override"]
STATUSES: tuple[Status, ...] = ("pending", "claimed", "decided")


class ReviewError(Exception):
    """A refused transition; `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ReviewError):
    status = 404


class Conflict(ReviewError):
    status = 409


CONTESTS_AT_HUB = "with review.store = hub, contests are filed at the fleet hub"
CONTESTS_NOT_IN_FLEET = (
    f"{CONTESTS_AT_HUB} (POST /decisions/{{id}}/contest there; review.hub_url names it)"
)


class Forbidden(ReviewError):
    status = 403


@dataclass(frozen=True, slots=True)
class HeldAnswer:
    """The model's answer kept back from a hold-mode client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # Why `body` is empty: the answer was too large to travel to the hub (`sidecar.review.held`).
    omitted: str | None = None

    def body_json(self) -> Any:
        """The body as JSON when it is JSON, else as text (or base64 when not UTF-8)."""
        try:
            return json.loads(self.body)
        except ValueError:
            try:
                return self.body.decode()
            except UnicodeDecodeError:
                return {"base64": base64.b64encode(self.body).decode()}


@dataclass(frozen=True, slots=True)
class ReviewItem:
    item_id: str  # the decision id
    seq: int
    created: float
    reason: str
    mode: str  # "queued" (flag) | "held"
    status: Status
    decision: dict[str, Any]
    explanation: dict[str, Any] | None
    claimed_by: str | None
    lease_expires: float | None
    action: Action | None
    outcome: Any
    decided_reason: str | None
    decided_by: str | None
    decided_at: float | None
    held: HeldAnswer | None

    @property
    def model_name(self) -> str:
        return str(self.decision.get("model_name", ""))


def decision_facts(decision: dict[str, Any]) -> tuple[str, Any, Any, Any]:
    """What a queue page shows of an item's decision: model name, version, prediction and
    confidence."""
    return (
        str(decision.get("model_name", "")),
        decision.get("model_version"),
        decision.get("prediction"),
        decision.get("confidence"),
    )


@dataclass(frozen=True, slots=True)
class ItemSummary:
    """An item as a queue page shows it: its state, and four facts of its decision."""

    item_id: str
    seq: int
    created: float
    reason: str
    mode: str
    status: Status
    model_name: str
    model_version: Any
    prediction: Any
    confidence: Any
    claimed_by: str | None
    lease_expires: float | None
    action: Action | None
    decided_by: str | None
    decided_at: float | None

    @classmethod
    def of(cls, item: ReviewItem) -> ItemSummary:
        name, version, prediction, confidence = decision_facts(item.decision)
        return cls(
            item_id=item.item_id,
            seq=item.seq,
            created=item.created,
            reason=item.reason,
            mode=item.mode,
            status=item.status,
            model_name=name,
            model_version=version,
            prediction=prediction,
            confidence=confidence,
            claimed_by=item.claimed_by,
            lease_expires=item.lease_expires,
            action=item.action,
            decided_by=item.decided_by,
            decided_at=item.decided_at,
        )


@dataclass(frozen=True, slots=True)
class Contest:
    """A decision contested by the person it is about (one per decision)."""

    item_id: str  # the decision id, and its review item's id
    filed_at: float
    filed_by: str  # the case handler (or admin) who filed it
    statement: str
    corrected: dict[str, Any] | None  # feature name -> the value the person says is right
    rescore: dict[str, Any] | None  # the model's answer for the corrected values
    reasons: dict[str, Any] | None  # the principal reasons when it was filed
    resolved_at: float | None  # when its review item was decided

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.item_id,
            "filed_at": self.filed_at,
            "filed_by": self.filed_by,
            "statement": self.statement,
            "corrected_values": self.corrected,
            "rescore": self.rescore,
            "reasons": self.reasons,
            "resolved_at": self.resolved_at,
        }


def decision_to_dict(decision: Decision) -> dict[str, Any]:
    """The decision's fields by name (`DECISION_FIELDS`), plus its `decision_id`.

    This is what the review queue stores and what the control plane answers with;
    `sidecar.control.lookup.decision_from_dict` reads it back.
    """
    # A shallow copy by field: dataclasses.asdict deep-copies every feature value, which
    # took half of an enqueue.
    d = dict(zip(DECISION_FIELDS, field_values(decision), strict=True))
    d["group_attributes"] = dict(decision.group_attributes)
    d["decision_id"] = decision.decision_id
    return d


class ReviewStore(abc.ABC):
    """The queue of decisions awaiting people, and the audit chain of what they did."""

    # Whether `contest` files contests here (a sidecar in fleet mode does not: see NoContests).
    takes_contests: bool = True

    @abc.abstractmethod
    def enqueue(
        self,
        decision: Decision,
        explanation: dict[str, Any] | None = None,
        held_response: bytes | None = None,
        held_headers: list[tuple[bytes, bytes]] | None = None,
        held_status: int | None = None,
    ) -> ReviewItem | None:
        """Add a routed decision (None when the id is already queued)."""

    @abc.abstractmethod
    def get(self, item_id: str) -> ReviewItem | None: ...

    @abc.abstractmethod
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
        """Items in queue order (oldest first), after the cursor `after` (an item's seq)."""

    def list_summaries(
        self,
        *,
        status: Status | None = None,
        reason: str | None = None,
        model: str | None = None,
        claimed_by: str | None = None,
        after: int = 0,
        limit: int = 50,
    ) -> list[ItemSummary]:
        """`list_items`' page as a queue page shows it (a store may read less for it)."""
        return [
            ItemSummary.of(i)
            for i in self.list_items(
                status=status,
                reason=reason,
                model=model,
                claimed_by=claimed_by,
                after=after,
                limit=limit,
            )
        ]

    @abc.abstractmethod
    def claim(self, item_id: str, reviewer: str) -> ReviewItem:
        """Take (or renew) the lease; Conflict when someone else holds it or it is decided."""

    @abc.abstractmethod
    def release(self, item_id: str, actor: str, *, force: bool = False) -> ReviewItem:
        """Give the lease back; Forbidden when it is someone else's (unless force)."""

    @abc.abstractmethod
    def decide(
        self, item_id: str, reviewer: str, action: Action, outcome: Any, reason: str
    ) -> ReviewItem:
        """Approve or override an item the reviewer holds the lease on."""

    @abc.abstractmethod
    def set_explanation(self, item_id: str, explanation: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def contest(
        self,
        decision: dict[str, Any],
        *,
        actor: str,
        statement: str,
        corrected: dict[str, Any] | None,
        rescore: dict[str, Any] | None,
        reasons: dict[str, Any] | None,
    ) -> tuple[Contest, bool]:
        """File a contest: a "contested" item at the front of the queue, audited; idempotent
        per decision ((the earlier contest, False) the second time)."""

    @abc.abstractmethod
    def get_contest(self, item_id: str) -> Contest | None: ...

    @abc.abstractmethod
    def expire_leases(self) -> int:
        """Return lapsed claims to pending; the number returned."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def history(self, item_id: str) -> list[audit.AuditRecord]: ...

    @abc.abstractmethod
    def audit_records(self, *, after: int = 0, limit: int = 100) -> list[audit.AuditRecord]: ...

    @abc.abstractmethod
    def audit_head(self) -> tuple[int, str]: ...

    @abc.abstractmethod
    def verify(self, expected_head: str | None = None) -> audit.VerifyResult: ...

    @abc.abstractmethod
    def close(self) -> None: ...


# Contested items go to the front of the queue: they take seqs counting up from here,
# below every routed item's (which start at 1 and are never reused), so the queue's one
# order (by seq) puts them first, oldest contest first, and a page cursor keeps working
# across both. A cursor of 0 means "from the start".
FRONT_SEQ = -(2**40)


def page_filter(
    seq: str, after: int, filters: list[tuple[str, str | None]], mark: str
) -> tuple[str, list[Any]]:
    """A queue page's WHERE clause and its arguments, for either store's SQL: items past
    the cursor `after` (0: from the start, contested items included) matching each
    `(column, value)` whose value is set; `mark` is the driver's placeholder."""
    where = [f"{seq} > {mark}"]
    args: list[Any] = [after if after else FRONT_SEQ]
    for column, value in filters:
        if value is not None:
            where.append(f"{column} = {mark}")
            args.append(value)
    return " AND ".join(where), args


def normalise_item_id(item_id: str) -> str:
    """`R` and `R/0` name the same item."""
    rid, row = split_decision_id(item_id)
    return f"{rid}/{row}"


class NoContests(ReviewStore):
    """For a sidecar with review.store = hub: its contests are filed at the hub (which scores
    corrections through the model's proxy itself), so here they are refused (409, naming
    the setting, and the hub when review.hub_url is set) before anything is scored."""

    takes_contests = False

    def get_contest(self, item_id: str) -> Contest | None:
        return None

    def contest(
        self,
        decision: dict[str, Any],
        *,
        actor: str,
        statement: str,
        corrected: dict[str, Any] | None,
        rescore: dict[str, Any] | None,
        reasons: dict[str, Any] | None,
    ) -> tuple[Contest, bool]:
        raise Conflict(CONTESTS_NOT_IN_FLEET)


# The rules of the three transitions, one copy for every store (the sidecar's SQLite
# queue and the hub's PostgreSQL one): a store reads the item in its transaction, asks
# here, then writes the change and its audit record.


def _refuse_decided(item: ReviewItem, conflicts: Counter) -> None:
    if item.status == "decided":
        conflicts.inc()
        raise Conflict(f"item {item.item_id} was already decided by {item.decided_by}")


def claimable(item: ReviewItem, reviewer: str, conflicts: Counter) -> str:
    """The audit action if `reviewer` may claim `item` now: "claimed", or "renewed" when they
    hold it already; Conflict when it is decided or someone else holds it."""
    _refuse_decided(item, conflicts)
    if item.status == "claimed" and item.claimed_by != reviewer:
        conflicts.inc()
        raise Conflict(f"item {item.item_id} is claimed by {item.claimed_by}")
    return "renewed" if item.status == "claimed" else "claimed"


def releasable(item: ReviewItem, actor: str, force: bool) -> None:
    """Raises unless `actor` may give `item`'s claim back (anyone's, with force)."""
    if item.status != "claimed":
        raise Conflict(f"item {item.item_id} is {item.status}, not claimed")
    if item.claimed_by != actor and not force:
        raise Forbidden(f"item {item.item_id} is claimed by someone else; only they may release it")


def decidable(
    item: ReviewItem, reviewer: str, action: Action, outcome: Any, conflicts: Counter
) -> Any:
    """The final outcome if `reviewer` may decide `item` now; raises otherwise.

    Approving keeps the model's answer as the final outcome."""
    _refuse_decided(item, conflicts)
    if item.status == "pending":
        conflicts.inc()
        raise Conflict(f"item {item.item_id} is not claimed (or the lease expired); claim it first")
    if item.claimed_by != reviewer:
        raise Forbidden(
            f"item {item.item_id} is claimed by someone else; a reviewer decides only what they claimed"
        )
    return item.decision.get("prediction") if action == "approve" else outcome


# Time to resolve a contest: a human review takes minutes to days.
RESOLUTION_BUCKETS_S = (60.0, 600.0, 3600.0, 4 * 3600.0, 86_400.0, 3 * 86_400.0, 7 * 86_400.0)


class ReviewMetrics:
    """The review queue's metrics: one set, whichever store keeps the queue (a sidecar's
    SQLite file or the hub's database). `count(status)` gives the items in a status."""

    def __init__(self, registry: Registry, count: Callable[[str], float]) -> None:
        self.transitions = {
            a: registry.counter(
                "sidecar_review_transitions_total", "Review state changes", {"action": a}
            )
            for a in ("claimed", "released", "lease_expired", "approved", "overridden")
        }
        self.conflicts = registry.counter(
            "sidecar_review_conflicts_total", "Claims or decisions refused with 409"
        )
        self.contested = registry.counter(
            "sidecar_contests_total", "Decisions contested by the person they are about"
        )
        self.resolution = registry.histogram(
            "sidecar_contest_resolution_seconds",
            "Time from a contest being filed to its review item being decided",
            bounds=RESOLUTION_BUCKETS_S,
        )
        for status in STATUSES:
            registry.gauge(
                "sidecar_review_items",
                "Review items by status",
                {"status": status},
                fn=functools.partial(count, status),
            )
