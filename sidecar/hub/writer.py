"""Batched, idempotent writes of one poll's events: one transaction per batch.

Bodies are stored as the text that arrived (`sidecar.hub.schema`, migration 5):
PostgreSQL neither parses nor rebuilds them. The hub decodes each message
(`sidecar.hub.rows`) and sends the columns the queries filter on beside it.

Two ways to write a batch, compared by `loadtests/bench_hub.py` (the README
keeps the figures): `copy` and `pipeline` (one `INSERT ... ON CONFLICT DO
NOTHING` per row in psycopg's pipeline mode, `executemany`). `copy` COPYs the
decisions and explanations straight into their tables. A batch that meets a
row already stored (redelivered after a restart or a rebalance, or being
written by another hub at the same moment, whose commit ends our wait on the
key) gets a unique violation, which rolls the whole transaction back; the
batch is then written again through session-local staging tables, COPY into
them and one `INSERT ... SELECT ... ON CONFLICT DO NOTHING` per table, which
skips what is there. So writing a batch twice leaves what writing it once did,
and the common batch, all new, costs PostgreSQL one pass instead of two.

Every statement takes its rows in primary-key order (the direct COPY sorts
them: canonical UUID text sorts as the index does): two hubs writing the same
redelivered events at once then take the rows' locks in one order and wait
for each other instead of deadlocking.

The database-decoding path (`write_raw`; not the default, see
`sidecar.hub.ingest.DEFAULT_DECODE`) hands the messages to PostgreSQL as they
came: COPY streams them verbatim into a staging table, whose generated column
parses each once (`jsonb`), and each table's `INSERT ... SELECT` extracts its
columns there and stores the text. The checks the Python path makes (an
object, of its topic's event type, with a UUID event id, a time, a decision
id) are a view over the staging table; a batch the database cannot parse (a
message that is not JSON, not UTF-8, or with a time it cannot read) is written
again through the Python path, which counts and skips the bad messages, so a
poison message never stalls a partition.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from sidecar.hub import audit as chain
from sidecar.hub import review, schema
from sidecar.hub.db import Conn
from sidecar.hub.rows import KINDS_OF_CODES, RAW_DELIMITER, RAW_QUOTE, Raw, ReviewRequest, Rows

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


# Tables the copy method writes with a COPY straight into them, no staging hop (see `_write`):
# the two that take every event. Review events are few, and go with the review requests.
_DIRECT = frozenset({"decisions", "explanations"})

_KIND = (
    "CASE kind " + " ".join(f"WHEN '{c}' THEN '{k}'" for c, k in KINDS_OF_CODES.items()) + " END"
)
_UUID = "^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$"
_VALID = (
    "jsonb_typeof(j) = 'object'"
    f" AND j->>'event_type' = {_KIND}"
    " AND jsonb_typeof(j->'event_id') = 'string'"
    f" AND j->>'event_id' ~ '{_UUID}'"
    " AND jsonb_typeof(j->'time') = 'string'"
    " AND j->>'time' ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T'"
    " AND jsonb_typeof(j->'decision_id') = 'string' AND j->>'decision_id' <> ''"
    " AND (kind <> 'd' OR (jsonb_typeof(j->'model_name') = 'string'"
    " AND j->>'model_name' <> ''))"
)
# The staged messages with what every table's INSERT reads; NULLs where a message is not valid.
# `body` is the message's text as it came (what is stored), `j` the database's parse of it.
_RAW_VIEW = (
    "CREATE OR REPLACE TEMP VIEW in_events AS SELECT kind, body, j, valid,"
    " CASE WHEN valid THEN (j->>'event_id')::uuid END AS event_id,"
    " CASE WHEN valid THEN (j->>'time')::timestamptz END AS time,"
    " CASE WHEN valid THEN j->>'decision_id' END AS decision_id"
    f" FROM (SELECT kind, body, j, coalesce({_VALID}, false) AS valid FROM in_raw) r"
)
_RAW_COPY = (
    "COPY in_raw (kind, body) FROM STDIN WITH (FORMAT csv, DELIMITER"
    f" E'\\x{RAW_DELIMITER.hex()}', QUOTE E'\\x{RAW_QUOTE.hex()}')"
).encode()
# The UTC days of the valid ones (their partitions), and how many are not valid (day NULL).
_RAW_DAYS = b"SELECT (time AT TIME ZONE 'UTC')::date, count(*) FROM in_events GROUP BY 1"
_RAW_REQUESTS = (
    b"SELECT decision_id, coalesce(nullif(j->>'reason', ''), 'requested'),"
    b" extract(epoch FROM time)::float8, j->'held' FROM in_events"
    b" WHERE kind = 'r' AND valid AND j->>'action' = 'requested'"
    b" AND j->>'audit_hash' IS NULL ORDER BY decision_id"
)
_RAW_INSERTS = (
    (
        "decisions",
        b"INSERT INTO decisions (event_id, time, decision_id, request_id, model_name,"
        b" model_version, group_attributes, body)"
        b" SELECT event_id, time, decision_id, j->>'request_id', j->>'model_name',"
        b" j->>'model_version', CASE WHEN jsonb_typeof(j->'group_attributes') = 'object'"
        b" THEN j->'group_attributes' ELSE '{}'::jsonb END, body"
        b" FROM in_events WHERE kind = 'd' AND valid ORDER BY event_id, time"
        b" ON CONFLICT DO NOTHING",
    ),
    (
        "explanations",
        b"INSERT INTO explanations (event_id, time, decision_id, body)"
        b" SELECT event_id, time, decision_id, body FROM in_events WHERE kind = 'e' AND valid"
        b" ORDER BY event_id, time ON CONFLICT DO NOTHING",
    ),
    (
        "review_events",
        b"INSERT INTO review_events (event_id, time, decision_id, body)"
        b" SELECT event_id, time, decision_id, j FROM in_events WHERE kind = 'r' AND valid"
        b" ORDER BY event_id, time ON CONFLICT DO NOTHING",
    ),
)


@dataclass(frozen=True, slots=True)
class Written:
    """What one batch added: new rows per table (redelivered events are not counted)."""

    decisions: int
    explanations: int
    review_events: int
    review_items: int
    invalid: int = 0


class Writer:
    """Owns one connection; `write` is one transaction."""

    def __init__(
        self, conn: Conn, method: Method = "copy", clock: Callable[[], float] = time.time
    ) -> None:
        self._conn = conn
        self._method = method
        self._clock = clock
        self._days: set[Any] = set()
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS in_raw (kind text NOT NULL, body text NOT NULL,"
            # Parsed once, as COPY stores the row; the checks and every INSERT read it.
            " j jsonb GENERATED ALWAYS AS (body::jsonb) STORED) ON COMMIT DELETE ROWS"
        )
        conn.execute(_RAW_VIEW)
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

    def write_raw(self, raw: Raw) -> Written:
        """Write undecoded messages: decoded and checked by the database (see the module)."""
        if not raw.copyable:
            return self.write_decoded(raw)
        try:
            try:
                return self._write_raw(raw)
            except psycopg.errors.CheckViolation:
                self._days.clear()  # as in `write`: a partition was dropped by retention
                return self._write_raw(raw)
        except psycopg.errors.DataError:
            # Something in the batch the database cannot read: decode it here, message by message.
            return self.write_decoded(raw)

    def write_decoded(self, raw: Raw) -> Written:
        """Write messages decoded and checked here (bad ones counted and skipped)."""
        return self.write_rows(raw.rows())

    def write_rows(self, rows: Rows) -> Written:
        """`write`, with the messages `rows` counted as invalid in the answer."""
        w = self.write(rows)
        return Written(w.decisions, w.explanations, w.review_events, w.review_items, rows.invalid)

    def _write_raw(self, raw: Raw) -> Written:
        conn = self._conn
        while True:
            with conn.transaction():
                with conn.cursor() as cur:
                    with cur.copy(_RAW_COPY) as copy:
                        copy.write(raw.copy_data())
                    found = cur.execute(_RAW_DAYS).fetchall()
                days = {day for day, _ in found if day is not None}
                invalid = sum(int(n) for day, n in found if day is None)
                new_days = days - self._days
                if not new_days:
                    requests = [
                        ReviewRequest(str(did), str(reason), float(at), held)
                        for did, reason, at, held in conn.execute(_RAW_REQUESTS).fetchall()
                    ]
                    if requests:
                        chain.lock(conn)  # first, as in `_write`
                    counts = []
                    for _table, sql in _RAW_INSERTS:
                        with conn.cursor() as cur:
                            cur.execute(sql)
                            counts.append(max(cur.rowcount, 0))
                    items = review.request_many(conn, requests, self._clock())
                    return Written(counts[0], counts[1], counts[2], items, invalid)
            # Days this writer has not made partitions for: the transaction ended having
            # written nothing (its staging rows go with it); make them outside it, then again.
            schema.ensure_partitions(conn, new_days)
            self._days |= new_days

    def _write(self, rows: Rows) -> Written:
        conn = self._conn
        new_days = rows.days - self._days
        if new_days:
            schema.ensure_partitions(conn, new_days)
            self._days |= new_days
        if self._method == "copy":
            try:
                return self._commit(rows, direct=True)
            except psycopg.errors.UniqueViolation:
                # Part of the batch is stored already: redelivered after a restart or a
                # rebalance, or being written by another hub now (its commit ended our wait
                # on the key). The transaction rolled back whole; the staging path skips
                # what is there.
                pass
        return self._commit(rows, direct=False)

    def _commit(self, rows: Rows, *, direct: bool) -> Written:
        conn = self._conn
        with conn.transaction():
            if rows.requests:
                # The chain's lock before any row: a review transaction takes it first too,
                # so the two never wait on each other's locks in opposite orders.
                chain.lock(conn)
            counts = [
                self._insert(table, getattr(rows, table), direct=direct and table in _DIRECT)
                for table in _TABLES
            ]
            items = review.request_many(conn, rows.requests, self._clock())
        return Written(counts[0], counts[1], counts[2], items)

    def _insert(self, table: str, values: Sequence[tuple[Any, ...]], *, direct: bool) -> int:
        if not values:
            return 0
        columns = _TABLES[table]
        names = ", ".join(columns)
        with self._conn.cursor() as cur:
            if direct:
                # Straight into the table, in key order (canonical UUID text sorts as the
                # index does): two hubs copying the same events wait for each other's rows
                # in one order, and the later gets the unique violation `_write` handles.
                with cur.copy(f"COPY {table} ({names}) FROM STDIN".encode()) as copy:
                    for row in sorted(values):
                        copy.write_row(row)
                return max(cur.rowcount, 0)
            if self._method == "copy":
                with cur.copy(f"COPY in_{table} ({names}) FROM STDIN".encode()) as copy:
                    for row in values:
                        copy.write_row(row)
                cur.execute(
                    f"INSERT INTO {table} ({names}) SELECT {names} FROM in_{table}"
                    " ORDER BY event_id, time ON CONFLICT DO NOTHING".encode()
                )
                return cur.rowcount
            marks = ", ".join(["%s"] * len(columns))
            # Primary-key order (event_id, time), as the COPY path's ORDER BY.
            ordered = sorted(values, key=lambda v: (uuid.UUID(v[0]), v[1]))
            cur.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING".encode(),
                ordered,
                returning=False,
            )
            return max(cur.rowcount, 0)
