"""Retention: old days go as whole partitions; decided review items past their own retention; the chain stays."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from sidecar.hub import retention, schema
from sidecar.hub.db import Conn, connect
from sidecar.hub.review import request_many
from sidecar.hub.rows import ReviewRequest, Rows, add
from sidecar.hub.writer import Writer
from tests.hub.hubkit import decision, decision_message, explanation_message
from tests.postgres_server import PostgresServer

NOW = dt.datetime(2026, 11, 30, 5, 0, tzinfo=dt.UTC).timestamp()
DAY = 86_400.0


@pytest.fixture
def conn(postgres_server: PostgresServer) -> Iterator[Conn]:
    url = postgres_server.create_database()
    with connect(url) as c:
        schema.migrate(c)
        yield c
    postgres_server.drop_database(url)


def _ids(conn: Conn) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT decision_id FROM decisions").fetchall()}


def test_days_past_retention_are_dropped_as_whole_partitions(conn: Conn) -> None:
    # 2026-11-30 05:00 with 7 days kept: the cut is 2026-11-23 00:00. The 22nd's partition ends
    # at the cut and goes; the 23rd's starts at it and stays, even its first second.
    old = decision(at=dt.datetime(2026, 11, 22, 23, 59, tzinfo=dt.UTC).timestamp())
    edge = decision(at=dt.datetime(2026, 11, 23, 0, 0, 1, tzinfo=dt.UTC).timestamp())
    new = decision(at=NOW - 60)
    rows = Rows()
    for d in (old, edge, new):
        add(rows, "decision", decision_message(d))
    writer = Writer(conn)
    writer.write(rows)
    dropped = retention.apply(conn, retention_days=7, review_retention_days=365, now=NOW)
    assert dropped.partitions == ["decisions_p20261122", "explanations_p20261122"]
    assert _ids(conn) == {edge.decision_id, new.decision_id}
    # Nothing left to drop: a second run is a no-op.
    assert retention.apply(conn, 7, 365, now=NOW).partitions == []
    # An event of a dropped day that arrives late gets its partition again (and goes next
    # run), also through a writer that had made (and cached) the dropped partition.
    rows = Rows()
    add(rows, "explanation", explanation_message(old))
    add(rows, "decision", decision_message(old))
    writer.write(rows)
    assert old.decision_id in _ids(conn)


def test_decided_items_go_after_their_own_retention_and_the_chain_stays(conn: Conn) -> None:
    with conn.transaction():
        request_many(
            conn,
            [ReviewRequest("a/0", "low_confidence", NOW), ReviewRequest("b/0", "audit", NOW)],
            NOW - 400 * DAY,
        )
        conn.execute(
            "UPDATE review_items SET status = 'decided', decided_at = %s WHERE item_id = 'a/0'",
            (NOW - 400 * DAY,),
        )
    dropped = retention.apply(conn, retention_days=30, review_retention_days=365, now=NOW)
    assert dropped.review_items == 1
    left = [str(r[0]) for r in conn.execute("SELECT item_id FROM review_items").fetchall()]
    assert left == ["b/0"]  # pending items are never dropped, however old
    row = conn.execute("SELECT count(*) FROM audit").fetchone()
    assert row is not None and row[0] == 2
