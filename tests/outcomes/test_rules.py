"""What an outcome must be, and whether the lookup store knows its decision."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from sidecar.control.store import DecisionStore
from sidecar.metrics import Registry
from sidecar.outcomes.known import KnownDecisions
from sidecar.outcomes.rules import InvalidOutcome, OutcomeRules, rfc3339_utc
from tests.eventlib import make_decision


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-12-24T09:30:00Z", "2026-12-24T09:30:00.000000Z"),
        ("2026-12-24t09:30:00z", "2026-12-24T09:30:00.000000Z"),
        ("2026-12-24 09:30:00+01:00", "2026-12-24T08:30:00.000000Z"),
        ("2026-12-31T23:30:00.123456789-02:00", "2027-01-01T01:30:00.123456Z"),
        ("2026-12-24T09:30:00.5Z", "2026-12-24T09:30:00.500000Z"),
    ],
)
def test_rfc3339_times_of_any_offset_become_utc_with_microseconds(text: str, utc: str) -> None:
    assert rfc3339_utc(text) == utc


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2026-12-24T09:30:00", "with an offset"),
        ("2026-12-24", "with an offset"),
        ("24/12/2026 09:30Z", "with an offset"),
        ("2026-02-30T09:30:00Z", "not a valid time"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
        (datetime(2026, 12, 24, 9, 30), "no time zone"),
        (1795392000, "RFC 3339 string"),
    ],
)
def test_times_without_an_offset_or_out_of_range_are_refused(value: object, why: str) -> None:
    with pytest.raises(InvalidOutcome, match=why):
        rfc3339_utc(value)


def test_an_aware_datetime_is_taken() -> None:
    when = datetime(2026, 12, 24, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert rfc3339_utc(when) == "2026-12-24T14:30:00.000000Z"


def test_with_class_labels_an_outcome_must_be_one_of_them() -> None:
    rules = OutcomeRules(["default", "repaid"])
    assert rules.value("repaid") == "repaid"
    for bad in ("Repaid", 1, 0.5, None, ["repaid"], True):
        with pytest.raises(InvalidOutcome):
            rules.value(bad)
    with pytest.raises(InvalidOutcome, match=r"not one of model\.class_labels: default, repaid"):
        rules.value_from_text("1")


def test_without_class_labels_outcomes_are_labels_or_finite_numbers() -> None:
    rules = OutcomeRules([])
    assert rules.value(3) == 3 and rules.value(2.5) == 2.5 and rules.value("late") == "late"
    for bad in (math.nan, math.inf, True, "", "x" * 257, {"a": 1}):
        with pytest.raises(InvalidOutcome):
            rules.value(bad)
    assert rules.value("x" * 256) == "x" * 256
    assert [rules.value_from_text(t) for t in ("1", "-2", "0.5", "1e3", "1.0", "one")] == [
        1,
        -2,
        0.5,
        1000.0,
        1.0,
        "one",
    ]
    with pytest.raises(InvalidOutcome, match="finite"):
        rules.value_from_text("1e999")


def at(ms: int, tail: str = "0" * 19) -> str:
    """A call id of this sidecar's shape (UUIDv7) minted at `ms` milliseconds."""
    return f"{ms:012x}7{tail}"


def test_decision_known_true_false_or_null() -> None:
    t0 = 1_795_392_000_000
    store = DecisionStore(2, Registry())
    known = KnownDecisions(store, started=t0 / 1000)
    first = make_decision(0, call_id=at(t0 + 1))
    store.add([first])
    assert known([f"{first.call_id}/0"]) == [True]
    assert known([f"{first.call_id}/1"]) == [False]  # a row its call never had
    assert known([f"{at(t0 + 2)}/0"]) == [False]  # made after the start, and not here
    assert known([f"{at(t0 - 1)}/0"]) == [None]  # before the start: perhaps a previous run's
    assert known([f"{at(t0, 'f' * 19)}/0"]) == [None]  # the start's own millisecond: no order
    assert known(["not-one-of-ours/0"]) == [None]
    # Calls are recorded when answered: a slow call made first is recorded last. Once
    # retention forgets a call, no id up to it can be told, whichever was recorded first.
    slow, fast = at(t0 + 10), at(t0 + 20)
    store.add([make_decision(1, call_id=fast), make_decision(2, call_id=slow)])
    assert store.get(f"{first.call_id}/0") is None and store.newest_forgotten == first.call_id
    assert known([f"{first.call_id}/0"]) == [None]
    store.add([make_decision(3, call_id=at(t0 + 30))])  # forgets `fast`, keeps `slow`
    assert store.newest_forgotten == fast
    assert known([f"{at(t0 + 15)}/0"]) == [None]  # older than a forgotten call: cannot tell
    assert known([f"{slow}/0"]) == [True]
    assert known([f"{at(t0 + 21)}/0"]) == [False]
    # A batch is answered item by item, in its order.
    batch = [f"{slow}/0", f"{at(t0 + 21)}/0", f"{at(t0 + 15)}/0", f"{slow}/0"]
    assert known(batch) == [True, False, None, True]
    # Without a store (the file loader) nothing can be told.
    assert KnownDecisions(None)([f"{slow}/0", "x/0"]) == [None, None]


def test_with_an_empty_store_only_ids_from_after_the_start_are_known_missing() -> None:
    t0 = 1_795_392_000_000
    known = KnownDecisions(DecisionStore(10, Registry()), started=t0 / 1000)
    assert known([f"{at(t0 + 1)}/0"]) == [False]
    assert known([f"{at(t0 - 1)}/0"]) == [None]
