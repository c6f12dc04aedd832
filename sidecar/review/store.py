"""The embedded review store: SQLite in WAL mode.

Every transition is one write transaction that also appends to the audit
chain, so state and audit cannot disagree; the review event is published
after the commit.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.review import audit
from sidecar.review.event_body import SYSTEM_ACTOR, review_event_body
from sidecar.review.model import (
    FRONT_SEQ,
    Action,
    Conflict,
    Contest,
    Forbidden,
    HeldAnswer,
    ItemSummary,
    NotFound,
    ReviewError,
    ReviewItem,
    ReviewMetrics,
    ReviewStore,
    Status,
    claimable,
    decidable,
    decision_facts,
    decision_to_dict,
    normalise_item_id,
    page_filter,
    releasable,
)
from sidecar.sinks.base import EventSink

__all__ = [
    "Conflict",
    "Forbidden",
    "NotFound",
    "ReviewError",
    "ReviewItem",
    "ReviewStore",
    "SqliteReviewStore",
]

log = logging.getLogger("sidecar.review")


def _dumps(value: Any) -> str:
    # default=str: numpy scalars and other oddities become text rather than failing the enqueue.
    return json.dumps(value, separators=(",", ":"), default=str)


def _loads(text: str | bytes) -> Any:
    # orjson reads a queue page's 50 decisions in a fifth of json's time; what it refuses
    # is the NaN and Infinity that json.dumps writes for such features, which json reads.
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


# How stale the per-status counts (metrics, the console's queue page) may be.
COUNTS_MAX_AGE_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    reason TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    model_name TEXT NOT NULL,
    decision TEXT NOT NULL,
    explanation TEXT,
    claimed_by TEXT,
    lease_expires REAL,
    action TEXT,
    outcome TEXT,
    decided_reason TEXT,
    decided_by TEXT,
    decided_at REAL,
    held_status INTEGER,
    held_headers TEXT,
    held_body BLOB
);
CREATE INDEX IF NOT EXISTS items_status ON items(status, seq);
CREATE INDEX IF NOT EXISTS items_lease ON items(status, lease_expires);
CREATE TABLE IF NOT EXISTS contests (
    item_id TEXT PRIMARY KEY,
    filed_at REAL NOT NULL,
    filed_by TEXT NOT NULL,
    statement TEXT NOT NULL,
    corrected TEXT,
    rescore TEXT,
    reasons TEXT,
    resolved_at REAL
);
"""

_CONTEST_COLUMNS = (
    "item_id, filed_at, filed_by, statement, corrected, rescore, reasons, resolved_at"
)


def _contest(row: tuple[Any, ...]) -> Contest:
    def loads(v: Any) -> Any:
        return None if v is None else _loads(v)

    return Contest(
        item_id=row[0],
        filed_at=float(row[1]),
        filed_by=row[2],
        statement=row[3],
        corrected=loads(row[4]),
        rescore=loads(row[5]),
        reasons=loads(row[6]),
        resolved_at=row[7],
    )


_ITEM_COLUMNS = (
    "item_id, seq, created, reason, mode, status, decision, explanation, claimed_by,"
    " lease_expires, action, outcome, decided_reason, decided_by, decided_at,"
    " held_status, held_headers, held_body"
)


# A queue page reads an item's state and four facts of its decision. A page of 50 (of
# 20,000 items, with its JSON, in-process) cost 0.56-0.65 ms read as whole items (the
# explanation and held answer too, into ReviewItems), 0.41-0.49 ms this way.
_SUMMARY_COLUMNS = (
    "item_id, seq, created, reason, mode, status, decision, claimed_by, lease_expires,"
    " action, decided_by, decided_at"
)


def _summary(row: tuple[Any, ...]) -> ItemSummary:
    name, version, prediction, confidence = decision_facts(_loads(row[6]))
    return ItemSummary(
        item_id=row[0],
        seq=int(row[1]),
        created=float(row[2]),
        reason=row[3],
        mode=row[4],
        status=row[5],
        model_name=name,
        model_version=version,
        prediction=prediction,
        confidence=confidence,
        claimed_by=row[7],
        lease_expires=row[8],
        action=row[9],
        decided_by=row[10],
        decided_at=row[11],
    )


def _item(row: tuple[Any, ...]) -> ReviewItem:
    held = None
    if row[15] is not None:
        held = HeldAnswer(int(row[15]), [tuple(h) for h in _loads(row[16])], bytes(row[17]))
    return ReviewItem(
        item_id=row[0],
        seq=int(row[1]),
        created=float(row[2]),
        reason=row[3],
        mode=row[4],
        status=row[5],
        decision=_loads(row[6]),
        explanation=_loads(row[7]) if row[7] is not None else None,
        claimed_by=row[8],
        lease_expires=row[9],
        action=row[10],
        outcome=_loads(row[11]) if row[11] is not None else None,
        decided_reason=row[12],
        decided_by=row[13],
        decided_at=row[14],
        held=held,
    )


class SqliteReviewStore(ReviewStore):
    """The embedded review store: SQLite in WAL mode, one connection behind a lock."""

    def __init__(
        self,
        path: str | Path,
        *,
        sink: EventSink,
        registry: Registry,
        lease_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path)
        if str(path) != ":memory:":
            self._path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; only a power loss can drop the last commit.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA + audit.SCHEMA)
        self._lock = threading.Lock()
        # (when, the database's data_version then, the counts); None after this store's writes.
        self._counts: tuple[float, int, dict[str, int]] | None = None
        self._sink = sink
        self._lease = lease_seconds
        self._clock = clock
        self._enqueued = registry.counter(
            "sidecar_review_enqueued_total", "Decisions added to the review queue"
        )
        self._duplicates = registry.counter(
            "sidecar_review_duplicates_total",
            "Routed decisions not queued because their id was already in the queue",
        )
        metrics = ReviewMetrics(registry, self._count)
        self._transitions = metrics.transitions
        self._conflicts = metrics.conflicts
        self._contested = metrics.contested
        self._resolution = metrics.resolution
        self._shed = registry.counter(
            "sidecar_review_events_shed_total", "Review events the sink refused"
        )

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, list[audit.AuditRecord]]]:
        """One write transaction; the audit records it appended are published after commit."""
        appended: list[audit.AuditRecord] = []
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn, appended
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._counts = None  # this process's writes show in the next count at once
        for rec in appended:
            self._publish(rec)

    def _publish(self, rec: audit.AuditRecord) -> None:
        try:
            ok = self._sink.publish("review", rec.decision_id, review_event_body(rec))
        except Exception:
            log.exception("review event for %s could not be published", rec.decision_id)
            ok = False
        if not ok:
            self._shed.inc()

    def _append(
        self,
        conn: sqlite3.Connection,
        appended: list[audit.AuditRecord],
        item_id: str,
        action: str,
        actor: str,
        data: dict[str, Any],
        now: float,
    ) -> None:
        appended.append(
            audit.append(
                conn,
                time=now,
                item_id=item_id,
                decision_id=item_id,
                action=action,
                actor=actor,
                data=data,
            )
        )

    def _row(self, conn: sqlite3.Connection, item_id: str) -> ReviewItem | None:
        row = conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE item_id = ?", (item_id,)
        ).fetchone()
        return None if row is None else _item(row)

    def _expire(
        self, conn: sqlite3.Connection, appended: list[audit.AuditRecord], now: float
    ) -> int:
        rows = conn.execute(
            "SELECT item_id, claimed_by FROM items WHERE status = 'claimed' AND lease_expires <= ?"
            " ORDER BY seq",
            (now,),
        ).fetchall()
        for item_id, holder in rows:
            conn.execute(
                "UPDATE items SET status = 'pending', claimed_by = NULL, lease_expires = NULL"
                " WHERE item_id = ?",
                (item_id,),
            )
            self._append(
                conn, appended, item_id, "lease_expired", SYSTEM_ACTOR, {"holder": holder}, now
            )
            self._transitions["lease_expired"].inc()
        return len(rows)

    def _has_expired(self, now: float) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM items WHERE status = 'claimed' AND lease_expires <= ? LIMIT 1",
                (now,),
            ).fetchone()
        return row is not None

    # -- the interface -----------------------------------------------------------------------

    def enqueue(
        self,
        decision: Decision,
        explanation: dict[str, Any] | None = None,
        held_response: bytes | None = None,
        held_headers: list[tuple[bytes, bytes]] | None = None,
        held_status: int | None = None,
    ) -> ReviewItem | None:
        item_id = decision.decision_id
        now = self._clock()
        reason = decision.review_reason or "requested"
        mode = decision.review or "queued"
        headers_json = None
        if held_response is not None:
            headers_json = _dumps(
                [[n.decode("latin-1"), v.decode("latin-1")] for n, v in held_headers or []]
            )
        with self._write() as (conn, appended):
            cur = conn.execute(
                "INSERT OR IGNORE INTO items (item_id, created, reason, mode, status, model_name,"
                " decision, explanation, held_status, held_headers, held_body)"
                " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    now,
                    reason,
                    mode,
                    decision.model_name,
                    _dumps(decision_to_dict(decision)),
                    None if explanation is None else _dumps(explanation),
                    None if held_response is None else (held_status or 200),
                    headers_json,
                    held_response,
                ),
            )
            if cur.rowcount == 0:
                self._duplicates.inc()
                log.warning("decision %s is already in the review queue; not queued again", item_id)
                return None
            self._append(
                conn,
                appended,
                item_id,
                "requested",
                SYSTEM_ACTOR,
                {"reason": reason, "mode": mode},
                now,
            )
            item = self._row(conn, item_id)
        self._enqueued.inc()
        return item

    def get(self, item_id: str) -> ReviewItem | None:
        item_id = normalise_item_id(item_id)
        self.expire_leases()
        with self._lock:
            return self._row(self._conn, item_id)

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
        rows = self._page(_ITEM_COLUMNS, status, reason, model, claimed_by, after, limit)
        return [_item(r) for r in rows]

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
        rows = self._page(_SUMMARY_COLUMNS, status, reason, model, claimed_by, after, limit)
        return [_summary(r) for r in rows]

    def _page(
        self,
        columns: str,
        status: Status | None,
        reason: str | None,
        model: str | None,
        claimed_by: str | None,
        after: int,
        limit: int,
    ) -> list[tuple[Any, ...]]:
        """A queue page's rows of `columns` (expired leases returned to the queue first)."""
        self.expire_leases()
        where, args = page_filter(
            "seq",
            after,
            [
                ("status", status),
                ("reason", reason),
                ("model_name", model),
                ("claimed_by", claimed_by),
            ],
            "?",
        )
        args.append(limit)
        sql = f"SELECT {columns} FROM items WHERE {where} ORDER BY seq LIMIT ?"
        with self._lock:
            rows: list[tuple[Any, ...]] = self._conn.execute(sql, args).fetchall()
        return rows

    def _current(
        self, conn: sqlite3.Connection, appended: list[audit.AuditRecord], item_id: str, now: float
    ) -> ReviewItem:
        """The item as a transition sees it: expired leases returned first, 404 if unknown."""
        self._expire(conn, appended, now)
        item = self._row(conn, item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        return item

    def claim(self, item_id: str, reviewer: str) -> ReviewItem:
        item_id = normalise_item_id(item_id)
        now = self._clock()
        with self._write() as (conn, appended):
            item = self._current(conn, appended, item_id, now)
            action = claimable(item, reviewer, self._conflicts)
            expires = now + self._lease
            conn.execute(
                "UPDATE items SET status = 'claimed', claimed_by = ?, lease_expires = ?"
                " WHERE item_id = ?",
                (reviewer, expires, item_id),
            )
            self._append(conn, appended, item_id, action, reviewer, {"lease_expires": expires}, now)
            self._transitions["claimed"].inc()
            claimed = self._row(conn, item_id)
        assert claimed is not None
        return claimed

    def release(self, item_id: str, actor: str, *, force: bool = False) -> ReviewItem:
        item_id = normalise_item_id(item_id)
        now = self._clock()
        with self._write() as (conn, appended):
            item = self._current(conn, appended, item_id, now)
            releasable(item, actor, force)
            conn.execute(
                "UPDATE items SET status = 'pending', claimed_by = NULL, lease_expires = NULL"
                " WHERE item_id = ?",
                (item_id,),
            )
            self._append(
                conn, appended, item_id, "released", actor, {"holder": item.claimed_by}, now
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
        with self._write() as (conn, appended):
            item = self._current(conn, appended, item_id, now)
            final = decidable(item, reviewer, action, outcome, self._conflicts)
            conn.execute(
                "UPDATE items SET status = 'decided', action = ?, outcome = ?, decided_reason = ?,"
                " decided_by = ?, decided_at = ?, lease_expires = NULL WHERE item_id = ?",
                (action, _dumps(final), reason, reviewer, now, item_id),
            )
            verb = "approved" if action == "approve" else "overridden"
            self._append(
                conn, appended, item_id, verb, reviewer, {"reason": reason, "outcome": final}, now
            )
            self._transitions[verb].inc()
            decided = self._row(conn, item_id)
            resolved = self._resolve_contest(conn, item_id, now)
        if resolved is not None:
            self._resolution.observe(resolved)
        assert decided is not None
        return decided

    # -- contests ------------------------------------------------------------------------

    def _contest_row(self, conn: sqlite3.Connection, item_id: str) -> Contest | None:
        row = conn.execute(
            f"SELECT {_CONTEST_COLUMNS} FROM contests WHERE item_id = ?", (item_id,)
        ).fetchone()
        return None if row is None else _contest(row)

    def _resolve_contest(self, conn: sqlite3.Connection, item_id: str, now: float) -> float | None:
        """Seconds from filing to this decision, the first time a contested item is decided."""
        row = conn.execute(
            "SELECT filed_at FROM contests WHERE item_id = ? AND resolved_at IS NULL", (item_id,)
        ).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE contests SET resolved_at = ? WHERE item_id = ?", (now, item_id))
        return max(0.0, now - float(row[0]))

    def get_contest(self, item_id: str) -> Contest | None:
        with self._lock:
            return self._contest_row(self._conn, normalise_item_id(item_id))

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
        """File a contest: its review item goes to the front of the queue with reason
        "contested" (created, or moved there and reopened when decided), in one transaction
        with its audit record. (the contest, True) when filed now; (the earlier one, False)
        when the decision was already contested: filing is idempotent per decision."""
        item_id = normalise_item_id(decision["decision_id"])
        now = self._clock()
        with self._write() as (conn, appended):
            earlier = self._contest_row(conn, item_id)
            if earlier is not None:
                return earlier, False
            self._expire(conn, appended, now)
            (front,) = conn.execute(
                "SELECT COALESCE(MAX(seq), ?) + 1 FROM items WHERE seq < 0", (FRONT_SEQ,)
            ).fetchone()
            item = self._row(conn, item_id)
            previous = None if item is None else item.status
            if item is None:
                conn.execute(
                    "INSERT INTO items (seq, item_id, created, reason, mode, status, model_name,"
                    " decision) VALUES (?, ?, ?, 'contested', 'queued', 'pending', ?, ?)",
                    (front, item_id, now, str(decision.get("model_name", "")), _dumps(decision)),
                )
            elif item.status == "decided":
                # A decided item is reopened: the person asks for a (new) human review. The
                # earlier verdict stays in the audit chain.
                conn.execute(
                    "UPDATE items SET seq = ?, reason = 'contested', status = 'pending',"
                    " claimed_by = NULL, lease_expires = NULL, action = NULL, outcome = NULL,"
                    " decided_reason = NULL, decided_by = NULL, decided_at = NULL"
                    " WHERE item_id = ?",
                    (front, item_id),
                )
            else:
                conn.execute(
                    "UPDATE items SET seq = ?, reason = 'contested' WHERE item_id = ?",
                    (front, item_id),
                )
            conn.execute(
                f"INSERT INTO contests ({_CONTEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    item_id,
                    now,
                    actor,
                    statement,
                    None if corrected is None else _dumps(corrected),
                    None if rescore is None else _dumps(rescore),
                    None if reasons is None else _dumps(reasons),
                ),
            )
            self._append(
                conn,
                appended,
                item_id,
                "contested",
                actor,
                {
                    "reason": "contested",
                    "previous_status": previous,
                    "statement": statement,
                    "corrected": corrected,
                    "rescored_decision": None if rescore is None else rescore.get("decision_id"),
                },
                now,
            )
            filed = self._contest_row(conn, item_id)
        self._contested.inc()
        assert filed is not None
        return filed, True

    def set_explanation(self, item_id: str, explanation: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE items SET explanation = ? WHERE item_id = ? AND explanation IS NULL",
                (_dumps(explanation), normalise_item_id(item_id)),
            )

    def expire_leases(self) -> int:
        now = self._clock()
        if not self._has_expired(now):
            return 0
        with self._write() as (conn, appended):
            return self._expire(conn, appended, now)

    def _count(self, status: str) -> float:
        return float(self.counts().get(status, 0))

    def counts(self) -> dict[str, int]:
        """Items per status: exact when nothing was written since they were counted (by this
        store or another process), else at most COUNTS_MAX_AGE_S old.

        A scrape reads one gauge per status and the console's queue page reads them
        too: one GROUP BY over the queue (3.3 ms at 20,000 items, measured) serves
        them all for a second instead of running per gauge and per page. The data
        plane's process writes the queue while the control process counts it:
        `PRAGMA data_version` (a few microseconds) tells this connection whether
        another one has committed since, without reading the table.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._counts
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            if cached is not None and (cached[1] == version or now - cached[0] < COUNTS_MAX_AGE_S):
                return dict(cached[2])
            rows = self._conn.execute("SELECT status, COUNT(*) FROM items GROUP BY status")
            counts = {str(s): int(n) for s, n in rows.fetchall()}
            self._counts = (
                now,
                int(version),
                counts,
            )  # under the lock: a write's reset cannot be lost
        return dict(counts)

    def history(self, item_id: str) -> list[audit.AuditRecord]:
        with self._lock:
            return audit.records(self._conn, item_id=normalise_item_id(item_id), limit=10_000)

    def audit_records(self, *, after: int = 0, limit: int = 100) -> list[audit.AuditRecord]:
        with self._lock:
            return audit.records(self._conn, after=after, limit=limit)

    def audit_head(self) -> tuple[int, str]:
        with self._lock:
            return audit.head(self._conn)

    def verify(self, expected_head: str | None = None) -> audit.VerifyResult:
        with self._lock:
            return audit.verify(self._conn, expected_head)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
