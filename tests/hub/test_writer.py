"""Batched writes: idempotent on event_id, both write methods, bad messages counted and skipped."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from sidecar.hub import schema
from sidecar.hub.db import Conn, connect
from sidecar.hub.rows import Rows, add
from sidecar.hub.writer import Method, Writer
from sidecar.review.audit import GENESIS
from tests.hub.hubkit import decision, decision_message, explanation_message, request_message
from tests.postgres_server import PostgresServer


@pytest.fixture
def conn(postgres_server: PostgresServer) -> Iterator[Conn]:
    url = postgres_server.create_database()
    with connect(url) as c:
        schema.migrate(c)
        yield c
    postgres_server.drop_database(url)


def _count(conn: Conn, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("method", ["copy", "pipeline"])
def test_a_batch_written_twice_is_stored_once(conn: Conn, method: Method) -> None:
    ds = [decision(request_id="r1", at=1_764_460_800.0 + i * 3600) for i in range(30)]
    rows = Rows()
    for d in ds:
        add(rows, "decision", decision_message(d))
        add(rows, "explanation", explanation_message(d))
    # The same event twice in one batch, too (a producer retry before the broker de-duplicated).
    add(rows, "decision", decision_message(ds[0]))
    writer = Writer(conn, method)
    first = writer.write(rows)
    again = writer.write(rows)
    assert (first.decisions, first.explanations) == (30, 30)
    assert (again.decisions, again.explanations) == (0, 0)
    assert _count(conn, "decisions") == 30
    assert _count(conn, "explanations") == 30
    # Thirty hours from midnight (2025-11-30): two daily partitions for them.
    names = {name for name, _ in schema.partitions(conn, "decisions")}
    assert {"decisions_p20251130", "decisions_p20251201"} <= names
    assert "decisions_p20251202" not in names


def test_messages_that_are_not_events_of_their_topic_are_counted_and_skipped(conn: Conn) -> None:
    d = decision()
    rows = Rows()
    for bad in (b"not json", b"[]", b'{"event_type": "decision"}', None, explanation_message(d)):
        add(rows, "decision", bad)
    add(rows, "decision", decision_message(d))
    assert rows.invalid == 5
    assert Writer(conn).write(rows).decisions == 1


def test_a_review_request_queues_the_decision_once_with_its_audit_record(conn: Conn) -> None:
    d = decision(review="queued")
    rows = Rows()
    add(rows, "decision", decision_message(d))
    add(rows, "review", request_message(d))
    writer = Writer(conn, clock=lambda: 1000.0)
    assert writer.write(rows).review_items == 1
    assert writer.write(rows).review_items == 0
    assert _count(conn, "review_items") == 1
    assert _count(conn, "review_events") == 1
    audit = conn.execute("SELECT seq, item_id, action, prev_hash FROM audit").fetchall()
    assert audit == [(1, d.decision_id, "requested", GENESIS)]


def test_a_local_mode_review_step_is_kept_as_an_event_but_not_queued(conn: Conn) -> None:
    from sidecar.sinks import events

    d = decision(review="queued")
    body = events.review_event(
        decision_id=d.decision_id,
        action="requested",
        reason="low_confidence",
        reviewer=None,
        outcome=None,
        previous_audit_hash=GENESIS,
        audit_hash="ab" * 32,
    )
    rows = Rows()
    add(rows, "review", events.dumps(body))
    written = Writer(conn).write(rows)
    assert (written.review_events, written.review_items) == (1, 0)


@pytest.mark.parametrize("method", ["copy", "pipeline"])
def test_bodies_are_stored_as_the_text_that_arrived(conn: Conn, method: Method) -> None:
    d = decision(request_id="r1", groups={"gender": "F"})
    messages = {"decision": decision_message(d), "explanation": explanation_message(d)}
    # Key order and spacing a jsonb column would not keep: the text is what was sent.
    messages["decision"] = messages["decision"].replace(b'{"', b'{ "', 1)
    rows = Rows()
    for kind, value in messages.items():
        add(rows, kind, value)
    Writer(conn, method).write(rows)
    for kind, table in (("decision", "decisions"), ("explanation", "explanations")):
        row = conn.execute(f"SELECT body FROM {table}".encode()).fetchone()
        assert row is not None and row[0] == messages[kind].decode()


@pytest.mark.parametrize("method", ["copy", "pipeline"])
def test_a_batch_that_meets_rows_already_stored_adds_only_the_new_ones(
    conn: Conn, method: Method
) -> None:
    """A hub restarted mid-ingest reads its last batch again, and more after it: the copy
    method's COPY into the table meets the stored rows and the batch goes through the
    staging INSERT instead, in the same transaction's place."""
    ds = [decision(at=1_764_460_800.0 + i * 60) for i in range(40)]
    writer = Writer(conn, method)
    first, whole = Rows(), Rows()
    for i, d in enumerate(ds):
        # Built once: each call mints a new event (id and time) of the same decision.
        messages = (decision_message(d), explanation_message(d))
        for rows in (first, whole) if i % 2 else (whole,):
            add(rows, "decision", messages[0])
            add(rows, "explanation", messages[1])
    fresh = writer.write(first)
    assert (fresh.decisions, fresh.explanations) == (20, 20)
    again = writer.write(whole)
    assert (again.decisions, again.explanations) == (20, 20)
    row = conn.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM decisions"
        " UNION ALL SELECT count(*), count(DISTINCT event_id) FROM explanations"
    ).fetchall()
    assert row == [(40, 40), (40, 40)]
    # And a fresh batch after it is written whole again.
    later = Rows()
    add(later, "decision", decision_message(decision(at=1_764_460_800.0 + 7200)))
    assert writer.write(later).decisions == 1


def test_event_ids_in_other_uuid_spellings_are_stored_canonical(conn: Conn) -> None:
    d = decision()
    body = orjson.loads(decision_message(d))
    canonical = body["event_id"]
    body["event_id"] = "{" + canonical.upper().replace("-", "") + "}"
    rows = Rows()
    add(rows, "decision", orjson.dumps(body))
    add(rows, "decision", decision_message(d))  # the same event in the sidecar's spelling
    assert rows.decisions[0][0] == canonical
    assert Writer(conn).write(rows).decisions == 1
