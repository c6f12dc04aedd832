"""Smoke runs of the hub benchmark's pieces against a real PostgreSQL (no timing assertions)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from loadtests.bench_hub import (
    SERVER_SETTINGS,
    _pct,
    apply_settings,
    bench_ingest,
    bench_writer,
    fresh_database,
    load_decisions,
    lookup_database,
    server_settings,
)
from tests.kafka_broker import KafkaBroker
from tests.postgres_server import PostgresServer


def test_the_write_methods_store_every_event_of_every_round(
    postgres_server: PostgresServer,
) -> None:
    url = fresh_database(postgres_server.url())
    try:
        result = bench_writer(url, 600, 2)
        assert [len(v) for v in result["all"].values()] == [2, 2]
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM decisions"
            ).fetchone()
        assert row == (2400, 2400)
        ids, _ = load_decisions(url, 700)
        assert len(set(ids)) == 700
    finally:
        postgres_server.drop_database(url)


def test_percentiles_are_of_the_sorted_values() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert (_pct(values, 0.5), _pct(values, 0.99), _pct([3.0], 0.99)) == (51.0, 100.0, 3.0)


def test_the_ingest_ab_runs_every_consumer_and_decode_path_to_the_last_event(
    postgres_server: PostgresServer, kafka_broker: KafkaBroker
) -> None:
    # Each variant returns only once its database holds all 500 events (or raises).
    result = bench_ingest(
        postgres_server.url(), kafka_broker.bootstrap, 500, "copy", 1, ("confluent", "kafka-python")
    )
    assert set(result["variants"]) == {
        "confluent/python",
        "confluent/database",
        "kafka-python/python",
        "kafka-python/database",
    }
    assert (result["consumer"], result["decode"]) == ("confluent", "python")
    assert all(len(v) == 1 for v in result["all"]["events_per_s"].values())
    # 500 decisions of about 1 KB each went into the WAL.
    assert result["wal_bytes_per_event"] > 500


def test_pg_set_applies_settings_and_refuses_one_that_needs_a_restart(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url()
    try:
        apply_settings(url, ["checkpoint_timeout=17min", " max_wal_size = 3GB"])
        settings = server_settings(url)
        assert (settings["checkpoint_timeout"], settings["max_wal_size"]) == ("17min", "3GB")
        assert list(settings) == list(SERVER_SETTINGS)
        with pytest.raises(SystemExit, match="shared_buffers"):
            apply_settings(url, ["shared_buffers=64MB"])
        with pytest.raises(SystemExit, match="NAME=VALUE"):
            apply_settings(url, ["fsync"])
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET ALL")
            conn.execute("SELECT pg_reload_conf()")


def test_a_lookup_database_is_loaded_once_then_reused_and_refused_at_another_count(
    postgres_server: PostgresServer,
) -> None:
    name = f"bench_lookup_{uuid.uuid4().hex[:8]}"
    url, ids, rate = lookup_database(postgres_server.url(), name, 300)
    try:
        assert rate is not None and len(set(ids)) == 300
        again_url, again, again_rate = lookup_database(postgres_server.url(), name, 300)
        assert (again_url, again_rate) == (url, None)
        assert again == sorted(ids)  # in id order: the seeded picks are the same run to run
        with pytest.raises(SystemExit, match="holds 300 decisions, not 400"):
            lookup_database(postgres_server.url(), name, 400)
    finally:
        postgres_server.drop_database(url)
