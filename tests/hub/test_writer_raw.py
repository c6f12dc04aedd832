"""The ingest path: messages decoded and checked by PostgreSQL, and concurrent writers that never deadlock."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator

import orjson
import psycopg
import pytest

from sidecar.decisions import Decision
from sidecar.hub import schema
from sidecar.hub.db import Conn, connect
from sidecar.hub.rows import Raw, Rows, add
from sidecar.hub.writer import Writer, Written
from sidecar.review.audit import GENESIS
from tests.hub.hubkit import decision, decision_message, explanation_message, request_message
from tests.postgres_server import PostgresServer

DAY = 1_764_460_800.0  # 2025-11-30 00:00 UTC


@pytest.fixture
def url(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database()
    with connect(url) as c:
        schema.migrate(c)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def conn(url: str) -> Iterator[Conn]:
    with connect(url) as c:
        yield c


def _raw(*messages: tuple[str, bytes | None]) -> Raw:
    raw = Raw()
    for kind, value in messages:
        raw.extend(kind, [value])
    return raw


def _rows(conn: Conn, sql: str) -> list[tuple[object, ...]]:
    return conn.execute(sql.encode()).fetchall()


def test_the_database_extracts_the_same_columns_the_python_path_does(url: str) -> None:
    ds = [
        decision(request_id="r1", groups={"gender": "F"}, at=DAY + 3600),
        decision(model="fraud", at=DAY + 30 * 3600),  # the next day: its partition is made
    ]
    messages = [("decision", decision_message(d)) for d in ds]
    messages += [("explanation", explanation_message(d)) for d in ds]
    with connect(url) as conn:
        raw = _raw(*messages)
        assert raw.copyable
        written = Writer(conn).write_raw(raw)
        assert (written.decisions, written.explanations, written.invalid) == (2, 2, 0)
        by_database = _rows(
            conn,
            "SELECT event_id, time, decision_id, request_id, model_name, model_version,"
            " group_attributes, body FROM decisions ORDER BY decision_id",
        )
        explained = _rows(conn, "SELECT event_id, time, decision_id, body FROM explanations")
        conn.execute("TRUNCATE decisions, explanations")
        rows = Rows()
        for kind, value in messages:
            add(rows, kind, value)
        Writer(conn).write(rows)
        by_python = _rows(
            conn,
            "SELECT event_id, time, decision_id, request_id, model_name, model_version,"
            " group_attributes, body FROM decisions ORDER BY decision_id",
        )
        assert by_database == by_python
        assert sorted(explained) == sorted(
            _rows(conn, "SELECT event_id, time, decision_id, body FROM explanations")
        )
        names = {name for name, _ in schema.partitions(conn, "decisions")}
        assert {"decisions_p20251130", "decisions_p20251201"} <= names


def test_a_batch_written_twice_through_the_database_is_stored_once(conn: Conn) -> None:
    ds = [decision(at=DAY + i * 60) for i in range(20)]
    raw = _raw(
        *(("decision", decision_message(d)) for d in ds), ("decision", decision_message(ds[0]))
    )
    writer = Writer(conn)
    assert writer.write_raw(raw).decisions == 20
    assert writer.write_raw(raw).decisions == 0
    assert _rows(conn, "SELECT count(*) FROM decisions") == [(20,)]


def _bad_id(d: Decision) -> bytes:
    body = orjson.loads(decision_message(d))
    body["event_id"] = "not-a-uuid"
    return orjson.dumps(body)


def _bad_time(d: Decision) -> bytes:
    body = orjson.loads(decision_message(d))
    body["time"] = "2025-13-45T99:00:00Z"
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("bad", "copyable"),
    [
        # Checked by the database's view: counted, the rest written in the same statement.
        (lambda d: b"[]", True),
        (lambda d: b'{"event_type": "decision"}', True),
        (explanation_message, True),
        (_bad_id, True),
        (lambda d: decision_message(d).replace(b'"model_name":"credit"', b'"model_name":7'), True),
        # The database cannot read these: the batch goes through the Python path.
        (lambda d: b"not json", True),
        (lambda d: b'{"a": "\xff"}', True),
        (_bad_time, True),
        # These cannot pass verbatim: the Python path from the start.
        (lambda d: decision_message(d).replace(b",", b",\n", 1), False),
        (lambda d: b"{\x02}", False),
        (lambda d: None, False),
        (lambda d: b"", False),
    ],
)
def test_a_bad_message_is_counted_and_skipped_and_the_good_ones_are_written(
    conn: Conn, bad: Callable[[Decision], bytes | None], copyable: bool
) -> None:
    good = [decision(at=DAY + i) for i in range(3)]
    poison = bad(decision(at=DAY))
    raw = _raw(
        ("decision", decision_message(good[0])),
        ("decision", poison),
        *(("decision", decision_message(d)) for d in good[1:]),
    )
    assert raw.copyable is copyable
    written = Writer(conn).write_raw(raw)
    if b"\n" in (poison or b""):
        # A line break between tokens is still JSON: the Python path takes it.
        assert (written.decisions, written.invalid) == (4, 0)
    else:
        assert (written.decisions, written.invalid) == (3, 1)
    stored = {str(r[0]) for r in _rows(conn, "SELECT decision_id FROM decisions")}
    assert {d.decision_id for d in good} <= stored


def test_a_review_request_through_the_database_queues_the_decision_once(conn: Conn) -> None:
    d = decision(review="queued", at=DAY)
    raw = _raw(("decision", decision_message(d)), ("review", request_message(d)))
    writer = Writer(conn, clock=lambda: 1000.0)
    first = writer.write_raw(raw)
    assert (first.decisions, first.review_events, first.review_items) == (1, 1, 1)
    assert writer.write_raw(raw).review_items == 0
    audit = conn.execute("SELECT seq, item_id, action, prev_hash FROM audit").fetchall()
    assert audit == [(1, d.decision_id, "requested", GENESIS)]
    item = conn.execute("SELECT reason, status FROM review_items").fetchall()
    assert item == [("low_confidence", "pending")]


def _write(writer: Writer, how: str, messages: list[tuple[str, bytes]]) -> Written:
    if how == "database":
        return writer.write_raw(_raw(*messages))
    rows = Rows()
    for kind, value in messages:
        add(rows, kind, value)
    return writer.write(rows)


@pytest.mark.parametrize("how", ["database", "copy", "pipeline"])
def test_two_writers_of_the_same_redelivered_events_never_deadlock(url: str, how: str) -> None:
    """Two hubs writing one batch at once, as during a rebalance, in opposite orders: each
    INSERT takes its rows in key order, so one waits for the other instead of deadlocking."""
    rounds, size = 6, 600
    errors: list[BaseException] = []
    totals: list[int] = []
    for r in range(rounds):
        # No review requests: a batch with one takes the audit chain's lock first, which
        # serialises the two writers whatever the order of their rows.
        ds = [decision(at=DAY + r * 7 * 3600 + i) for i in range(size)]
        messages = [("decision", decision_message(d)) for d in ds]
        messages += [("explanation", explanation_message(d)) for d in ds[::3]]
        batches = [messages, messages[::-1]]
        barrier = threading.Barrier(2)
        days = {dt.datetime.fromtimestamp(d.time, dt.UTC).date() for d in ds}

        def run(
            batch: list[tuple[str, bytes]], days: set[dt.date], barrier: threading.Barrier
        ) -> None:
            try:
                with connect(url) as c:
                    writer = Writer(c, "pipeline" if how == "pipeline" else "copy")
                    # Partitions made first, so both writers race on rows alone.
                    schema.ensure_partitions(c, days)
                    barrier.wait()
                    totals.append(_write(writer, how, batch).decisions)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(b, days, barrier)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not [e for e in errors if isinstance(e, psycopg.errors.DeadlockDetected)], errors
        assert not errors, errors
    assert sum(totals) == rounds * size
    with connect(url) as c:
        assert _rows(c, "SELECT count(*), count(DISTINCT event_id) FROM decisions") == [
            (rounds * size, rounds * size)
        ]
        assert _rows(c, "SELECT count(*) FROM explanations") == [(rounds * size // 3,)]


def test_event_ids_are_uuids_in_the_python_path_too() -> None:
    rows = Rows()
    d = decision()
    add(rows, "decision", _bad_id(d))
    add(rows, "decision", decision_message(d))
    assert (rows.invalid, len(rows.decisions)) == (1, 1)
    assert uuid.UUID(rows.decisions[0][0])


@pytest.mark.parametrize("how", ["database", "copy"])
def test_a_held_answer_in_a_review_request_is_kept_with_its_item(url: str, how: str) -> None:
    from sidecar.review.held import held_field

    d = decision(review="held", at=DAY)
    body = orjson.loads(request_message(d))
    body["held"] = held_field(200, [(b"content-type", b"application/json")], b'{"y": [1]}', 100)
    messages = [("decision", decision_message(d)), ("review", orjson.dumps(body))]
    with connect(url) as c:
        assert _write(Writer(c), how, messages).review_items == 1
        row = c.execute(
            "SELECT mode, held_status, held_headers, held_body, held_omitted FROM review_items"
        ).fetchone()
        assert row == ("held", 200, [["content-type", "application/json"]], b'{"y": [1]}', None)
        record = c.execute("SELECT data FROM audit").fetchone()
        assert record is not None and orjson.loads(record[0]) == {
            "reason": "low_confidence",
            "mode": "held",
        }
