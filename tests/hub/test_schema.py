"""The hub's schema: created at start, migrations idempotent and safe when hubs start together; daily partitions."""

from __future__ import annotations

import datetime as dt
import threading

import orjson
import psycopg
import pytest
from psycopg.types.json import Jsonb

from sidecar.hub import monitor_state, schema
from sidecar.hub.db import Conn, connect, pool
from sidecar.hub.lookup import HubDecisions
from sidecar.hub.lookup_route import find
from tests.hub.hubkit import decision, decision_message, explanation_message
from tests.postgres_server import PostgresServer

# Every migration, in order: a fresh database gets them all at once.
ALL = [version for version, _ in schema.MIGRATIONS]


@pytest.fixture
def fresh_url(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def test_migrate_creates_every_table_once(fresh_url: str) -> None:
    with connect(fresh_url) as conn:
        assert schema.migrate(conn) == ALL
        assert schema.migrate(conn) == []
        tables = {
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert {
        "decisions",
        "explanations",
        "review_events",
        "review_items",
        "audit",
        "contests",
        "monitor_state",
    } <= tables


def test_hubs_starting_together_apply_each_migration_once(fresh_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            with connect(fresh_url) as conn:
                barrier.wait()
                results.append(schema.migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [[], [], [], ALL]


def test_partitions_are_daily_and_created_once(fresh_url: str) -> None:
    day = dt.date(2026, 11, 30)
    with connect(fresh_url) as conn:
        schema.migrate(conn)
        schema.ensure_partitions(conn, [day, day, day + dt.timedelta(days=1)])
        schema.ensure_partitions(conn, [day])
        assert [p[1] for p in schema.partitions(conn, "decisions")] == [
            day,
            day + dt.timedelta(days=1),
        ]
        # A row outside every partition is refused: the writer creates partitions first.
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute(
                "INSERT INTO decisions VALUES (gen_random_uuid(), '2026-12-05T00:00:00Z', 'x/0',"
                " NULL, 'm', NULL, '{}', '{}')"
            )
        # The day's upper bound is exclusive: midnight belongs to the next day.
        with conn.transaction():
            conn.execute(
                "INSERT INTO decisions VALUES (gen_random_uuid(), '2026-12-01T00:00:00Z', 'y/0',"
                " NULL, 'm', NULL, '{}', '{}')"
            )
        row = conn.execute("SELECT count(*) FROM decisions_p20261201").fetchone()
        assert row is not None and row[0] == 1


def _as_before_migration_5(conn: Conn) -> None:
    """The database as hubs before migration 5 left it (`migrate`'s statements, 1 to 4)."""
    with conn.transaction():
        conn.execute(
            "CREATE TABLE hub_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in schema.MIGRATIONS:
            if version < 5:
                conn.execute(sql.encode())
                conn.execute("INSERT INTO hub_migrations (version) VALUES (%s)", (version,))


def _indexes(conn: Conn, table: str) -> dict[str, str]:
    """Index name -> access method, of `table` itself (a partitioned parent's too)."""
    rows = conn.execute(
        "SELECT c.relname, a.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass",
        (table,),
    ).fetchall()
    return {str(n): str(m) for n, m in rows}


def test_migration_5_keeps_stored_bodies_as_text_and_lookups_read_them(fresh_url: str) -> None:
    d = decision(request_id="r-old", groups={"gender": "F"}, at=1_764_460_800.0 + 60)
    event = orjson.loads(decision_message(d))
    explained = orjson.loads(explanation_message(d))
    with connect(fresh_url) as conn:
        _as_before_migration_5(conn)
        # The decision's day, and the explanation's (it is stamped when it is made).
        made = dt.date.fromisoformat(explained["time"][:10])
        schema.ensure_partitions(conn, [dt.date(2025, 11, 30), made])
        # Rows as the writer stored them before: jsonb bodies.
        with conn.transaction():
            conn.execute(
                "INSERT INTO decisions VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    event["event_id"],
                    event["time"],
                    d.decision_id,
                    d.request_id,
                    d.model_name,
                    d.model_version,
                    Jsonb(d.group_attributes),
                    Jsonb(event),
                ),
            )
            conn.execute(
                "INSERT INTO explanations VALUES (%s, %s, %s, %s)",
                (explained["event_id"], explained["time"], d.decision_id, Jsonb(explained)),
            )
        assert "decisions_by_model" in _indexes(conn, "decisions")
        assert schema.migrate(conn) == [5, monitor_state.MIGRATION_VERSION]
        types = dict(
            conn.execute(
                "SELECT table_name, data_type FROM information_schema.columns"
                " WHERE column_name = 'body' AND table_name IN ('decisions', 'explanations',"
                " 'decisions_p20251130')"
            ).fetchall()
        )
        assert set(types.values()) == {"text"} and len(types) == 3
        row = conn.execute("SELECT body FROM decisions").fetchone()
        assert row is not None and orjson.loads(row[0]) == event
        # The btree on (model, time) is gone, a BRIN on time in its place, partitions included.
        parent = _indexes(conn, "decisions")
        assert "decisions_by_model" not in parent and parent["decisions_by_time"] == "brin"
        assert "brin" in _indexes(conn, "decisions_p20251130").values()
    p = pool(fresh_url, 1)
    try:
        found = find(p, d.decision_id)
        assert found is not None
        assert found.decision["request_id"] == "r-old"
        assert found.decision["group_attributes"] == {"gender": "F"}
        assert (found.explanation, found.source) == (explained, "sampled")
        assert HubDecisions(p).get_explanation(d.decision_id) == explained
        page, more = HubDecisions(p).search(model="credit", groups={"gender": "F"})
        assert [x["decision_id"] for x in page] == [d.decision_id] and not more
    finally:
        p.close()
