"""The fleet's one audit chain, in PostgreSQL.

The records and their hashes are those of `sidecar.review.audit` (same
canonical form, same table columns), so one verifier checks either store.
Every append takes a transaction-scoped advisory lock first and reads the
head under it: whichever hub serves a review action, the chain is extended
one record at a time, in the order the locks were granted, and the lock is
held until the transaction that wrote the record (and the state change it
records) commits.
"""

from __future__ import annotations

from typing import Any

from sidecar.hub.db import Conn
from sidecar.hub.schema import AUDIT_LOCK
from sidecar.priority import paced
from sidecar.review.audit import (
    AUDIT_COLUMNS,
    GENESIS,
    AuditRecord,
    VerifyResult,
    next_record,
    record_of_row,
    verify_rows,
)


def lock(conn: Conn) -> None:
    """Take the chain's lock for the rest of the current transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))


def head(conn: Conn) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


def append(
    conn: Conn,
    *,
    time: float,
    item_id: str,
    action: str,
    actor: str,
    data: dict[str, Any],
) -> AuditRecord:
    """Append one record; the caller's transaction holds the lock (`lock`)."""
    rec, row = next_record(head(conn), time, item_id, item_id, action, actor, data)
    conn.execute(
        f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", row
    )
    return rec


def records(
    conn: Conn, *, after: int = 0, limit: int = 100, item_id: str | None = None
) -> list[AuditRecord]:
    if item_id is None:
        cur = conn.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > %s ORDER BY seq LIMIT %s",
            (after, limit),
        )
    else:
        cur = conn.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE item_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (item_id, after, limit),
        )
    return [record_of_row(r) for r in cur.fetchall()]


def verify(conn: Conn, expected_head: str | None = None, per_s: float = 0) -> VerifyResult:
    """Walk the whole chain from genesis (streamed: a server-side cursor, not one big fetch),
    at most `per_s` records a second (0: no limit)."""
    with conn.transaction(), conn.cursor(name="audit_verify") as cur:
        cur.itersize = 10_000
        cur.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")
        return verify_rows(paced(cur, per_s), expected_head)
