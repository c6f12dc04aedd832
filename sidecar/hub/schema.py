"""The hub's tables, created and migrated by the hub at start.

Decisions and explanations are partitioned by day on their event time, so
retention drops whole partitions (`sidecar.hub.retention`) and never deletes
row by row. A partitioned table's unique key must hold the partition key, so
their key is `(event_id, time)`: a redelivered event carries the same id and
the same time (both are fixed when the sidecar builds it), so `ON CONFLICT DO
NOTHING` on that key makes writes idempotent on `event_id`.

Migrations are numbered and applied under a transaction-scoped advisory lock:
hubs starting together apply each once, and a hub restarted over an existing
database applies nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sidecar.hub import monitor_state
from sidecar.hub.db import Conn

# Arbitrary, fixed: the advisory lock ids the hubs agree on.
MIGRATION_LOCK = 0x5EC1DE01
PARTITION_LOCK = 0x5EC1DE02
AUDIT_LOCK = 0x5EC1DE03

PARTITIONED = ("decisions", "explanations")

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE decisions (
    event_id uuid NOT NULL,
    time timestamptz NOT NULL,
    decision_id text NOT NULL,
    request_id text,
    model_name text NOT NULL,
    model_version text,
    group_attributes jsonb NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (event_id, time)
) PARTITION BY RANGE (time);
CREATE INDEX decisions_by_id ON decisions (decision_id);
CREATE INDEX decisions_by_request ON decisions (request_id, decision_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX decisions_by_model ON decisions (model_name, time);

CREATE TABLE explanations (
    event_id uuid NOT NULL,
    time timestamptz NOT NULL,
    decision_id text NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (event_id, time)
) PARTITION BY RANGE (time);
CREATE INDEX explanations_by_id ON explanations (decision_id);

-- Every review event as received (the steps of sidecars that keep their own queue).
CREATE TABLE review_events (
    event_id uuid PRIMARY KEY,
    time timestamptz NOT NULL,
    decision_id text NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX review_events_by_id ON review_events (decision_id);

-- The fleet's one review queue.
CREATE TABLE review_items (
    seq bigserial UNIQUE,
    item_id text PRIMARY KEY,
    created double precision NOT NULL,
    reason text NOT NULL,
    mode text NOT NULL,
    status text NOT NULL,
    explanation jsonb,
    claimed_by text,
    lease_expires double precision,
    action text,
    outcome jsonb,
    decided_reason text,
    decided_by text,
    decided_at double precision
);
CREATE INDEX review_items_by_status ON review_items (status, seq);
CREATE INDEX review_items_by_lease ON review_items (status, lease_expires);

-- The audit chain: the columns of sidecar.review.audit's table, so one verifier reads both.
CREATE TABLE audit (
    seq bigint PRIMARY KEY,
    time double precision NOT NULL,
    item_id text NOT NULL,
    decision_id text NOT NULL,
    action text NOT NULL,
    actor text NOT NULL,
    data text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);
CREATE INDEX audit_by_item ON audit (item_id);
""",
    ),
    (
        2,
        # Contests filed at the hub (`sidecar.hub.contest`): one per decision; a contest goes
        # with its review item (retention deletes decided items past
        # `hub.review_retention_days`).
        """
CREATE TABLE contests (
    item_id text PRIMARY KEY REFERENCES review_items (item_id) ON DELETE CASCADE,
    filed_at double precision NOT NULL,
    filed_by text NOT NULL,
    statement text NOT NULL,
    corrected jsonb,
    rescore jsonb,
    reasons jsonb,
    resolved_at double precision
);
""",
    ),
    (
        3,
        """
-- Hold mode through the hub: the answer a client waits for, from the review-requested event
-- (sidecar.review.held); held_omitted says why the body is missing when it was too large.
ALTER TABLE review_items ADD COLUMN held_status integer, ADD COLUMN held_headers jsonb,
    ADD COLUMN held_body bytea, ADD COLUMN held_omitted text;
""",
    ),
    (
        4,
        # The review relay's cursor (`sidecar.hub.relay`): the last audit record published on
        # the reviews topic. From 0: a database that had a chain before gets it all published
        # (the events' ids are the chain's, so consumers that saw none of them lose nothing).
        """
CREATE TABLE hub_relay (
    name text PRIMARY KEY,
    audit_seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO hub_relay (name, audit_seq) VALUES ('reviews', 0);
""",
    ),
    (
        5,
        # Ingest's cost in PostgreSQL (loadtests/bench_hub.py): a `jsonb` body is parsed and
        # rebuilt on every insert, about half of the database's CPU per decision. The hub has
        # decoded and checked each event already and sends the columns the queries filter on,
        # so bodies are kept as the text that arrived and parsed by the hub when read; SQL
        # that needs a field of one casts it (`body::json`, the few explanations of one
        # decision). jsonb's text output is JSON, so existing rows convert in place: a rewrite
        # of both tables under their lock, which pauses ingest while it runs.
        # `decisions_by_model` (a btree on model and time) served no query: the search orders
        # by decision id and walks `decisions_by_id`, and the day partitions bound time. A
        # BRIN index on time (rows arrive in time order) serves a time range inside a day at a
        # fraction of a btree's upkeep per row.
        """
ALTER TABLE decisions ALTER COLUMN body TYPE text USING body::text;
ALTER TABLE explanations ALTER COLUMN body TYPE text USING body::text;
DROP INDEX decisions_by_model;
CREATE INDEX decisions_by_time ON decisions USING brin (time);
""",
    ),
    (monitor_state.MIGRATION_VERSION, monitor_state.MIGRATION),
)


def migrate(conn: Conn) -> list[int]:
    """Apply the migrations this database lacks; the versions applied now."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hub_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {int(str(r[0])) for r in conn.execute("SELECT version FROM hub_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO hub_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def ensure_partitions(conn: Conn, days: Iterable[dt.date]) -> None:
    """Create the daily partitions of `days` that do not exist yet (one short transaction)."""
    wanted = sorted(set(days))
    if not wanted:
        return
    with conn.transaction():
        # Two hubs creating the same partition would race in the catalogue.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        for day in wanted:
            nxt = day + dt.timedelta(days=1)
            for table in PARTITIONED:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {partition_name(table, day)} PARTITION OF {table}"
                    f" FOR VALUES FROM ('{day.isoformat()} 00:00:00+00')"
                    f" TO ('{nxt.isoformat()} 00:00:00+00')".encode()
                )


def partitions(conn: Conn, table: str) -> list[tuple[str, dt.date]]:
    """The daily partitions of `table`, oldest first, by name."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
        (table,),
    ).fetchall()
    out = []
    prefix = f"{table}_p"
    for (name,) in rows:
        text = str(name)
        if text.startswith(prefix):
            day = dt.datetime.strptime(text[len(prefix) :], "%Y%m%d").date()
            out.append((text, day))
    return sorted(out, key=lambda p: p[1])
