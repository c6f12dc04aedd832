"""Retention at the hub: whole partitions dropped, never row-by-row deletes.

Decisions and explanations live in daily partitions (`sidecar.hub.schema`);
a partition whose whole day is older than `hub.retention_days` is dropped
with `DROP TABLE`, which frees its space at once and leaves no dead rows for
vacuum. Review items are few: decided ones older than
`hub.review_retention_days` are deleted, together with the review events of
their decisions. The audit chain is never trimmed (a cut chain no longer
verifies from genesis).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from sidecar.hub import schema
from sidecar.hub.db import Conn


@dataclass(frozen=True, slots=True)
class Dropped:
    partitions: list[str]
    review_items: int


def apply(
    conn: Conn, retention_days: int, review_retention_days: int, now: float | None = None
) -> Dropped:
    now = time.time() if now is None else now
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    # A partition holds [day, day + 1): all of it is older than the cut when day + 1 <= cut.
    cut = today - dt.timedelta(days=retention_days)
    dropped: list[str] = []
    for table in schema.PARTITIONED:
        for name, day in schema.partitions(conn, table):
            if day + dt.timedelta(days=1) <= cut:
                with conn.transaction():
                    conn.execute(f"DROP TABLE IF EXISTS {name}".encode())
                dropped.append(name)
    review_cut = now - review_retention_days * 86_400.0
    with conn.transaction():
        rows = conn.execute(
            "DELETE FROM review_items WHERE status = 'decided' AND decided_at < %s"
            " RETURNING item_id",
            (review_cut,),
        ).fetchall()
        if rows:
            conn.execute(
                "DELETE FROM review_events WHERE decision_id = ANY(%s)",
                ([r[0] for r in rows],),
            )
    return Dropped(dropped, len(rows))
