"""The gap ledger: what was lost becomes gap records, kept until the sink takes them."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.metrics import Registry
from sidecar.sinks import gaps
from sidecar.sinks.gaps import MAX_IDS, GapLedger
from tests.eventlib import validate_event


def test_losses_become_one_record_per_reason_naming_the_decisions() -> None:
    ledger = GapLedger(Registry())
    ledger.note("queue_full", "decision", 2, ["a/0", "a/1"], when=100.0)
    ledger.note("queue_full", "decision", 1, ["b/0"], when=101.5)
    ledger.note("spool_full", "explanation", 4, when=100.5)
    bodies = {b["reason"]: b for b in ledger.take()}
    assert set(bodies) == {"queue_full", "spool_full"}
    shed = bodies["queue_full"]
    validate_event(shed)
    assert shed["dropped"] == 3 and shed["by_kind"] == {"decision": 3}
    assert shed["decision_ids"] == ["a/0", "a/1", "b/0"] and shed["decision_ids_complete"]
    assert (shed["first_time"], shed["last_time"]) == (
        "1970-01-01T00:01:40.000000Z",
        "1970-01-01T00:01:41.500000Z",
    )
    assert bodies["spool_full"]["by_kind"] == {"explanation": 4}


def test_past_the_id_bound_the_losses_go_on_in_the_next_record() -> None:
    # A burst of losses (a full queue shedding a thousand calls in one flush window on a slow
    # machine) still names every decision: the list is never left partial.
    ledger = GapLedger(Registry())
    ids = [f"r{i}/0" for i in range(2 * MAX_IDS + 5)]
    ledger.note("queue_full", "decision", 10, ids[:10])
    ledger.note("queue_full", "decision", len(ids) - 10, ids[10:])
    ledger.note("queue_full", "explanation", 3)
    bodies = ledger.take()
    for b in bodies:
        validate_event(b)
    assert [len(b["decision_ids"]) for b in bodies] == [MAX_IDS, MAX_IDS, 5]
    assert all(b["decision_ids_complete"] for b in bodies)
    assert [i for b in bodies for i in b["decision_ids"]] == ids
    assert sum(b["by_kind"]["decision"] for b in bodies) == len(ids)
    assert sum(b["dropped"] for b in bodies) == len(ids) + 3
    assert len({b["event_id"] for b in bodies}) == 3


def test_a_burst_past_the_pending_bound_gives_up_the_oldest_records_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rolling over seals a record every MAX_IDS decisions between two flushes, so the bound on
    # records waiting for the sink holds at each note, not only at the flush.
    monkeypatch.setattr(gaps, "MAX_IDS", 2)
    monkeypatch.setattr(gaps, "MAX_PENDING", 3)
    reg = Registry()
    ledger = GapLedger(reg)
    ids = [f"r{i}/0" for i in range(10)]
    ledger.note("queue_full", "decision", 10, ids)
    assert len(ledger._pending) == 3  # four sealed, the oldest given up; the fifth still open
    bodies = ledger.take()
    assert [b["decision_ids"] for b in bodies] == [ids[4:6], ids[6:8], ids[8:10]]
    assert all(b["decision_ids_complete"] for b in bodies)
    assert "sidecar_gap_records_lost_total 2" in reg.render()


def test_losses_without_their_ids_make_the_record_partial() -> None:
    ledger = GapLedger(Registry())
    ledger.note("crashed", "decision", 7, since=10.0, when=20.0)
    ledger.note("crashed", "decision", 2, ["a/0", "a/1"])
    (body,) = ledger.take()
    validate_event(body)
    assert body["dropped"] == 9 and not body["decision_ids_complete"]


def test_a_refused_record_is_offered_again_with_the_same_id() -> None:
    reg = Registry()
    ledger = GapLedger(reg)
    accept = False
    got: list[dict[str, Any]] = []

    def publish(key: str, body: dict[str, Any]) -> bool:
        if accept:
            got.append(body)
        return accept

    ledger._publish = publish
    ledger.note("spool_error", "decision", 1, ["x/0"])
    assert ledger.flush() == 0
    first = ledger.take()[0]["event_id"]
    accept = True
    assert ledger.flush() == 1
    assert [b["event_id"] for b in got] == [first]
    assert ledger.flush() == 0  # nothing left, nothing sent twice
    assert "sidecar_gap_records_total 1" in reg.render()
    assert 'sidecar_gap_events_total{kind="decision",reason="spool_error"} 1' in reg.render()


def test_the_thread_emits_without_waiting_for_another_event() -> None:
    ledger = GapLedger(Registry(), flush_s=0.01)
    got: list[dict[str, Any]] = []
    ledger.start(lambda key, body: got.append(body) is None)
    ledger.note("queue_full", "decision", 1, ["r/0"])
    for _ in range(500):
        if got:
            break
        ledger._stop.wait(0.01)
    ledger.close()
    assert [b["decision_ids"] for b in got] == [["r/0"]]
