"""Batched, idempotent writes of one poll's events: one transaction per batch.

Two ways to write a batch, compared by `loadtests/bench_hub.py` (the README
keeps the figures): `copy` streams the rows into a temporary table with COPY
and moves them with one `INSERT ... SELECT ... ON CONFLICT DO NOTHING` per
table; `pipeline` sends one `INSERT ... ON CONFLICT DO NOTHING` per row in
psycopg's pipeline mode (`executemany`). Either way a redelivered event hits
the conflict and is skipped, so writing a batch twice leaves what writing it
once did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from sidecar.hub import audit as chain
from sidecar.hub import review, schema
from sidecar.hub.db import Conn
from sidecar.hub.rows import Rows

Method = Literal["copy", "pipeline"]

_TABLES: dict[str, tuple[str, ...]] = {
    "decisions": (
        "event_id",
        "time",
        "decision_id",
        "request_id",
        "model_name",
        "model_version",
        "group_attributes",
        "body",
    ),
    "explanations": ("event_id", "time", "decision_id", "body"),
    "review_events": ("event_id", "time", "decision_id", "body"),
}


@dataclass(frozen=True, slots=True)
class Written:
    """What one batch added: new rows per table (redelivered events are not counted)."""

    decisions: int
    explanations: int
    review_events: int
    review_items: int


class Writer:
    """Owns one connection; `write` is one transaction."""

    def __init__(
        self, conn: Conn, method: Method = "copy", clock: Callable[[], float] = time.time
    ) -> None:
        self._conn = conn
        self._method = method
        self._clock = clock
        self._days: set[Any] = set()
        if method == "copy":
            for table in _TABLES:
                # Session-local staging tables, emptied by every commit.
                conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS in_{table} (LIKE {table})"
                    " ON COMMIT DELETE ROWS".encode()
                )

    def write(self, rows: Rows) -> Written:
        try:
            return self._write(rows)
        except psycopg.errors.CheckViolation:
            # No partition for a row: retention (on any hub) dropped one this writer had
            # made. Forget what it knew and make them again.
            self._days.clear()
            return self._write(rows)

    def _write(self, rows: Rows) -> Written:
        conn = self._conn
        new_days = rows.days - self._days
        if new_days:
            schema.ensure_partitions(conn, new_days)
            self._days |= new_days
        with conn.transaction():
            if rows.requests:
                # The chain's lock before any row: a review transaction takes it first too,
                # so the two never wait on each other's locks in opposite orders.
                chain.lock(conn)
            counts = [self._insert(table, getattr(rows, table)) for table in _TABLES]
            items = review.request_many(conn, rows.requests, self._clock())
        return Written(counts[0], counts[1], counts[2], items)

    def _insert(self, table: str, values: Sequence[tuple[Any, ...]]) -> int:
        if not values:
            return 0
        columns = _TABLES[table]
        names = ", ".join(columns)
        with self._conn.cursor() as cur:
            if self._method == "copy":
                with cur.copy(f"COPY in_{table} ({names}) FROM STDIN".encode()) as copy:
                    for row in values:
                        copy.write_row(row)
                cur.execute(
                    f"INSERT INTO {table} ({names}) SELECT {names} FROM in_{table}"
                    " ON CONFLICT DO NOTHING".encode()
                )
                return cur.rowcount
            marks = ", ".join(["%s"] * len(columns))
            cur.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING".encode(),
                values,
                returning=False,
            )
            return max(cur.rowcount, 0)
