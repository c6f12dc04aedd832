"""The hub's schema: created at start, migrations idempotent and safe when hubs start together; daily partitions."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest

from sidecar.hub import schema
from sidecar.hub.db import connect
from tests.postgres_server import PostgresServer


@pytest.fixture
def fresh_url(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def test_migrate_creates_every_table_once(fresh_url: str) -> None:
    with connect(fresh_url) as conn:
        assert schema.migrate(conn) == [1, 2]
        assert schema.migrate(conn) == []
        tables = {
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert {"decisions", "explanations", "review_events", "review_items", "audit"} <= tables


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
    assert sorted(results) == [[], [], [], [1, 2]]


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
