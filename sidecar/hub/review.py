"""The fleet's review queue in PostgreSQL: one queue, one audit chain, whatever hub serves.

Every transition is one transaction that first takes the audit chain's
advisory lock (`sidecar.hub.audit.lock`), then reads the item `FOR UPDATE`,
changes it and appends its audit record. Transitions are therefore decided
by the database one at a time across every hub: of two reviewers claiming
one item at two hubs, the second sees the first's claim and gets 409.
Taking the one lock first (before any row lock) also means two transitions
can never wait on each other's rows: no deadlock.

An item is requested by a review-requested event (ingested in the ingest
transaction, `request_many`); its decision is the decision event of the
same id, joined at read time. Until that event has arrived the item is not
shown (a lookup answers 404), since there is nothing yet to review.

Contests (`sidecar.hub.contest`) are filed in the same kind of transaction:
the chain's lock makes filing idempotent per decision across hubs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from sidecar.decisions import Decision
from sidecar.hub import audit as chain
from sidecar.hub import contest as contests
from sidecar.hub.db import Conn
from sidecar.hub.lookup import decision_dict
from sidecar.hub.rows import ReviewRequest
from sidecar.metrics import Registry
from sidecar.review import audit
from sidecar.review.event_body import SYSTEM_ACTOR
from sidecar.review.held import held_answer, held_field
from sidecar.review.model import (
    Action,
    Contest,
    HeldAnswer,
    NotFound,
    ReviewItem,
    ReviewMetrics,
    ReviewStore,
    Status,
    claimable,
    decidable,
    normalise_item_id,
    page_filter,
    releasable,
)

COUNTS_MAX_AGE_S = 1.0

# An item's own columns, as `item_with` reads them (`i` the item).
ITEM_STATE_COLUMNS = (
    "i.item_id, i.seq, i.created, i.reason, i.mode, i.status, i.explanation, i.claimed_by,"
    " i.lease_expires, i.action, i.outcome, i.decided_reason, i.decided_by, i.decided_at,"
    " i.held_status, i.held_headers, i.held_body, i.held_omitted"
)
ITEM_STATE_WIDTH = 18
_SELECT = (
    f"SELECT {ITEM_STATE_COLUMNS}, d.body, extract(epoch FROM d.time)::float8"
    " FROM review_items i JOIN LATERAL (SELECT body, time, model_name FROM decisions"
    " WHERE decision_id = i.item_id LIMIT 1) d ON true"
)


def item_with(row: Sequence[Any], decision: dict[str, Any]) -> ReviewItem:
    """A review item from its `ITEM_STATE_COLUMNS` and its decision (as `decision_dict`)."""
    return ReviewItem(
        item_id=row[0],
        seq=int(row[1]),
        created=float(row[2]),
        reason=row[3],
        mode=row[4],
        status=row[5],
        decision=decision,
        explanation=row[6],
        claimed_by=row[7],
        lease_expires=row[8],
        action=row[9],
        outcome=row[10],
        decided_reason=row[11],
        decided_by=row[12],
        decided_at=row[13],
        held=None
        if row[14] is None
        else HeldAnswer(int(row[14]), [(h[0], h[1]) for h in row[15]], bytes(row[16]), row[17]),
    )


def item_of_row(row: Sequence[Any]) -> ReviewItem:
    """A row of `_SELECT`: the item's columns, then its decision's body and time."""
    w = ITEM_STATE_WIDTH
    return item_with(row, decision_dict(row[w], float(row[w + 1])))


def request_many(conn: Conn, requests: Sequence[ReviewRequest], now: float) -> int:
    """Queue the requested decisions (in the caller's transaction); a repeated request is a no-op.

    Returns how many were new. Each new item gets its `requested` audit record.
    """
    if not requests:
        return 0
    chain.lock(conn)
    new = 0
    # In item id order: two hubs writing the same requests lock the rows in one order.
    for req in sorted(requests, key=lambda r: normalise_item_id(r.decision_id)):
        held = held_answer(req.held) if req.held is not None else None
        mode = "queued" if held is None else "held"
        row = conn.execute(
            "INSERT INTO review_items (item_id, created, reason, mode, status, held_status,"
            " held_headers, held_body, held_omitted)"
            " VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s) ON CONFLICT (item_id) DO NOTHING"
            " RETURNING item_id",
            (
                normalise_item_id(req.decision_id),
                now,
                req.reason,
                mode,
                None if held is None else held.status,
                None if held is None else Jsonb([list(h) for h in held.headers]),
                None if held is None else held.body,
                None if held is None else held.omitted,
            ),
        ).fetchone()
        if row is None:
            continue
        chain.append(
            conn,
            time=now,
            item_id=str(row[0]),
            action="requested",
            actor=SYSTEM_ACTOR,
            data={"reason": req.reason, "mode": mode},
        )
        new += 1
    return new


class HubReviewStore(ReviewStore):
    """`ReviewStore` over the hub's database, shared by every hub."""

    def __init__(
        self,
        pool: ConnectionPool[Conn],
        *,
        registry: Registry,
        lease_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._lease = lease_seconds
        self._clock = clock
        self._counts: tuple[float, dict[str, int]] | None = None
        metrics = ReviewMetrics(registry, self._count)
        self._transitions = metrics.transitions
        self._conflicts = metrics.conflicts
        self._contested = metrics.contested
        self._resolution = metrics.resolution

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        with self._pool.connection() as conn, conn.transaction():
            chain.lock(conn)
            yield conn
        self._counts = None

    def _row(self, conn: Conn, item_id: str, *, lock: bool = False) -> ReviewItem | None:
        sql = f"{_SELECT} WHERE i.item_id = %s{' FOR UPDATE OF i' if lock else ''}"
        row = conn.execute(sql.encode(), (item_id,)).fetchone()
        return None if row is None else item_of_row(row)

    def now(self) -> float:
        """The store's clock (leases lapse by it)."""
        return self._clock()

    def _expire(self, conn: Conn, now: float) -> int:
        rows = conn.execute(
            "WITH lapsed AS (SELECT item_id, claimed_by, seq FROM review_items"
            " WHERE status = 'claimed' AND lease_expires <= %s FOR UPDATE)"
            " UPDATE review_items r SET status = 'pending', claimed_by = NULL, lease_expires = NULL"
            " FROM lapsed WHERE r.item_id = lapsed.item_id"
            " RETURNING lapsed.seq, lapsed.item_id, lapsed.claimed_by",
            (now,),
        ).fetchall()
        for _, item_id, holder in sorted(rows):
            chain.append(
                conn,
                time=now,
                item_id=item_id,
                action="lease_expired",
                actor=SYSTEM_ACTOR,
                data={"holder": holder},
            )
            self._transitions["lease_expired"].inc()
        return len(rows)

    def _current(self, conn: Conn, item_id: str, now: float) -> ReviewItem:
        self._expire(conn, now)
        item = self._row(conn, item_id, lock=True)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        return item

    # -- the interface -----------------------------------------------------------------------

    def enqueue(
        self,
        decision: Decision,
        explanation: dict[str, Any] | None = None,
        held_response: bytes | None = None,
        held_headers: list[tuple[bytes, bytes]] | None = None,
        held_status: int | None = None,
    ) -> ReviewItem | None:
        held = None
        if held_response is not None:
            held = held_field(held_status or 200, held_headers or [], held_response, 2**31)
        req = ReviewRequest(
            decision.decision_id, decision.review_reason or "requested", decision.time, held
        )
        with self._write() as conn:
            if request_many(conn, [req], self._clock()) == 0:
                return None
            if explanation is not None:
                self._set_explanation(conn, decision.decision_id, explanation)
            return self._row(conn, normalise_item_id(decision.decision_id))

    def get(self, item_id: str) -> ReviewItem | None:
        key = normalise_item_id(item_id)
        with self._pool.connection() as conn:
            item = self._row(conn, key)
        # Only an item whose own lease lapsed needs the expiry now (one round trip less on
        # every lookup); the hub's housekeeping returns the others.
        if (
            item is not None
            and item.status == "claimed"
            and (item.lease_expires or 0) <= self._clock()
        ):
            self.expire_leases()
            with self._pool.connection() as conn:
                item = self._row(conn, key)
        return item

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
        self.expire_leases()
        where, args = page_filter(
            "i.seq",
            after,
            [
                ("i.status", status),
                ("i.reason", reason),
                ("d.model_name", model),
                ("i.claimed_by", claimed_by),
            ],
            "%s",
        )
        args.append(limit)
        sql = f"{_SELECT} WHERE {where} ORDER BY i.seq LIMIT %s"
        with self._pool.connection() as conn:
            return [item_of_row(r) for r in conn.execute(sql.encode(), args).fetchall()]

    def claim(self, item_id: str, reviewer: str) -> ReviewItem:
        item_id = normalise_item_id(item_id)
        now = self._clock()
        with self._write() as conn:
            item = self._current(conn, item_id, now)
            action = claimable(item, reviewer, self._conflicts)
            expires = now + self._lease
            conn.execute(
                "UPDATE review_items SET status = 'claimed', claimed_by = %s, lease_expires = %s"
                " WHERE item_id = %s",
                (reviewer, expires, item_id),
            )
            chain.append(
                conn,
                time=now,
                item_id=item_id,
                action=action,
                actor=reviewer,
                data={"lease_expires": expires},
            )
            self._transitions["claimed"].inc()
            claimed = self._row(conn, item_id)
        assert claimed is not None
        return claimed

    def release(self, item_id: str, actor: str, *, force: bool = False) -> ReviewItem:
        item_id = normalise_item_id(item_id)
        now = self._clock()
        with self._write() as conn:
            item = self._current(conn, item_id, now)
            releasable(item, actor, force)
            conn.execute(
                "UPDATE review_items SET status = 'pending', claimed_by = NULL,"
                " lease_expires = NULL WHERE item_id = %s",
                (item_id,),
            )
            chain.append(
                conn,
                time=now,
                item_id=item_id,
                action="released",
                actor=actor,
                data={"holder": item.claimed_by},
            )
            self._transitions["released"].inc()
            released = self._row(conn, item_id)
        assert released is not None
        return released

    def decide(
        self, item_id: str, reviewer: str, action: Action, outcome: Any, reason: str
    ) -> ReviewItem:
        item_id = normalise_item_id(item_id)
        now = self._clock()
        with self._write() as conn:
            item = self._current(conn, item_id, now)
            final = decidable(item, reviewer, action, outcome, self._conflicts)
            conn.execute(
                "UPDATE review_items SET status = 'decided', action = %s, outcome = %s,"
                " decided_reason = %s, decided_by = %s, decided_at = %s, lease_expires = NULL"
                " WHERE item_id = %s",
                (action, Jsonb(final), reason, reviewer, now, item_id),
            )
            verb = "approved" if action == "approve" else "overridden"
            chain.append(
                conn,
                time=now,
                item_id=item_id,
                action=verb,
                actor=reviewer,
                data={"reason": reason, "outcome": final},
            )
            self._transitions[verb].inc()
            decided = self._row(conn, item_id)
            resolved = contests.resolve(conn, item_id, now)
        if resolved is not None:
            self._resolution.observe(resolved)
        assert decided is not None
        return decided

    def get_contest(self, item_id: str) -> Contest | None:
        with self._pool.connection() as conn:
            return contests.get(conn, normalise_item_id(item_id))

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
        """File a contest (`sidecar.hub.contest`) in one review transaction: idempotent per
        decision across hubs, since the chain's lock orders every filing."""
        item_id = normalise_item_id(decision["decision_id"])
        now = self._clock()
        with self._write() as conn:
            self._expire(conn, now)
            filed, created = contests.file(
                conn,
                item_id,
                now=now,
                actor=actor,
                statement=statement,
                corrected=corrected,
                rescore=rescore,
                reasons=reasons,
            )
        if created:
            self._contested.inc()
        return filed, created

    def _set_explanation(self, conn: Conn, item_id: str, explanation: dict[str, Any]) -> None:
        conn.execute(
            "UPDATE review_items SET explanation = %s WHERE item_id = %s AND explanation IS NULL",
            (Jsonb(explanation), normalise_item_id(item_id)),
        )

    def set_explanation(self, item_id: str, explanation: dict[str, Any]) -> None:
        with self._pool.connection() as conn:
            self._set_explanation(conn, item_id, explanation)

    def expire_leases(self) -> int:
        now = self._clock()
        with self._pool.connection() as conn:
            lapsed = conn.execute(
                "SELECT 1 FROM review_items WHERE status = 'claimed' AND lease_expires <= %s"
                " LIMIT 1",
                (now,),
            ).fetchone()
        if lapsed is None:
            return 0
        with self._write() as conn:
            return self._expire(conn, now)

    def _count(self, status: str) -> float:
        return float(self.counts().get(status, 0))

    def counts(self) -> dict[str, int]:
        """Items per status, at most COUNTS_MAX_AGE_S old (exact after this hub's own writes)."""
        now = time.monotonic()
        cached = self._counts
        if cached is not None and now - cached[0] < COUNTS_MAX_AGE_S:
            return dict(cached[1])
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM review_items GROUP BY status"
            ).fetchall()
        counts = {str(s): int(n) for s, n in rows}
        self._counts = (now, counts)
        return dict(counts)

    def history(self, item_id: str) -> list[audit.AuditRecord]:
        with self._pool.connection() as conn:
            return chain.records(conn, item_id=normalise_item_id(item_id), limit=10_000)

    def audit_records(self, *, after: int = 0, limit: int = 100) -> list[audit.AuditRecord]:
        with self._pool.connection() as conn:
            return chain.records(conn, after=after, limit=limit)

    def audit_head(self) -> tuple[int, str]:
        with self._pool.connection() as conn:
            return chain.head(conn)

    def verify(self, expected_head: str | None = None) -> audit.VerifyResult:
        with self._pool.connection() as conn:
            return chain.verify(conn, expected_head)

    def close(self) -> None:
        """The pool belongs to the hub, which closes it."""
