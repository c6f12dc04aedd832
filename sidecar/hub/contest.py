"""Contests in the hub's database: one per decision, whatever hub they are filed at.

A contest is filed inside a review transaction (`sidecar.hub.review`): the
audit chain's advisory lock is held, so of two hubs filing the same decision
at once the second finds the first's row and answers with it (idempotent
across hubs: the database arbitrates). Filing puts the decision's review item
at the front of the queue with reason `contested` (created; moved there when
queued; reopened when decided, the earlier verdict staying in the chain),
appends a `contested` audit record and keeps its review event in
`review_events`, as the SQLite store does on one sidecar.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg.types.json import Jsonb

from sidecar.hub import audit as chain
from sidecar.hub.db import Conn
from sidecar.review.event_body import review_event_body
from sidecar.review.model import FRONT_SEQ, Contest

# The table is migration 2 of `sidecar.hub.schema`.
_COLUMNS = "item_id, filed_at, filed_by, statement, corrected, rescore, reasons, resolved_at"


def _contest(row: tuple[Any, ...]) -> Contest:
    return Contest(
        item_id=row[0],
        filed_at=float(row[1]),
        filed_by=row[2],
        statement=row[3],
        corrected=row[4],
        rescore=row[5],
        reasons=row[6],
        resolved_at=None if row[7] is None else float(row[7]),
    )


def get(conn: Conn, item_id: str) -> Contest | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM contests WHERE item_id = %s", (item_id,)).fetchone()
    return None if row is None else _contest(row)


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def file(
    conn: Conn,
    item_id: str,
    *,
    now: float,
    actor: str,
    statement: str,
    corrected: dict[str, Any] | None,
    rescore: dict[str, Any] | None,
    reasons: dict[str, Any] | None,
) -> tuple[Contest, bool]:
    """File the contest in the caller's transaction, which holds the chain's lock.

    The decision's row must be in `decisions` (the item shows joined to it).
    (the contest, True) when filed now; (the earlier one, False) when it already was."""
    earlier = get(conn, item_id)
    if earlier is not None:
        return earlier, False
    (front,) = conn.execute(
        "SELECT COALESCE(MAX(seq), %s) + 1 FROM review_items WHERE seq < 0", (FRONT_SEQ,)
    ).fetchone() or (FRONT_SEQ + 1,)
    status = conn.execute(
        "SELECT status FROM review_items WHERE item_id = %s FOR UPDATE", (item_id,)
    ).fetchone()
    previous = None if status is None else str(status[0])
    if previous is None:
        conn.execute(
            "INSERT INTO review_items (seq, item_id, created, reason, mode, status)"
            " VALUES (%s, %s, %s, 'contested', 'queued', 'pending')",
            (front, item_id, now),
        )
    elif previous == "decided":
        # The person asks for a (new) human review; the earlier verdict stays in the chain.
        conn.execute(
            "UPDATE review_items SET seq = %s, reason = 'contested', status = 'pending',"
            " claimed_by = NULL, lease_expires = NULL, action = NULL, outcome = NULL,"
            " decided_reason = NULL, decided_by = NULL, decided_at = NULL WHERE item_id = %s",
            (front, item_id),
        )
    else:
        conn.execute(
            "UPDATE review_items SET seq = %s, reason = 'contested' WHERE item_id = %s",
            (front, item_id),
        )
    conn.execute(
        f"INSERT INTO contests ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, NULL)",
        (item_id, now, actor, statement, _jsonb(corrected), _jsonb(rescore), _jsonb(reasons)),
    )
    record = chain.append(
        conn,
        time=now,
        item_id=item_id,
        action="contested",
        actor=actor,
        data={
            "reason": "contested",
            "previous_status": previous,
            "statement": statement,
            "corrected": corrected,
            "rescored_decision": None if rescore is None else rescore.get("decision_id"),
        },
    )
    # Its review event (a `requested` event with reason `contested`), kept with the fleet's
    # other review events.
    event = review_event_body(record)
    conn.execute(
        "INSERT INTO review_events (event_id, time, decision_id, body)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
        (event["event_id"], dt.datetime.fromtimestamp(now, dt.UTC), item_id, Jsonb(event)),
    )
    filed = get(conn, item_id)
    assert filed is not None
    return filed, True


def resolve(conn: Conn, item_id: str, now: float) -> float | None:
    """Seconds from filing to this decision, the first time a contested item is decided."""
    row = conn.execute(
        "UPDATE contests SET resolved_at = %s WHERE item_id = %s AND resolved_at IS NULL"
        " RETURNING filed_at",
        (now, item_id),
    ).fetchone()
    return None if row is None else max(0.0, now - float(row[0]))
