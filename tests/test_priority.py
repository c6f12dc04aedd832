"""`sidecar.priority.paced`: batch work spread out to a rate, on a clock the test drives."""

from __future__ import annotations

import pytest

from sidecar.priority import _PACE_STEP_S, paced


class FakeTime:
    """A clock that moves only when the code under test sleeps or the consumer works."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0
        self.sleeps.append(s)
        self.now += s


def consume(items: list[int], per_s: float, t: FakeTime, work_s: list[float]) -> list[int]:
    out = []
    for i, item in enumerate(paced(items, per_s, clock=t.clock, sleep=t.sleep)):
        out.append(item)
        t.now += work_s[i]
    return out


def test_no_limit_never_sleeps() -> None:
    t = FakeTime()
    assert consume(list(range(500)), 0, t, [0.0] * 500) == list(range(500))
    assert t.sleeps == []


def test_fast_work_is_held_to_the_rate_in_steps() -> None:
    t = FakeTime()
    per_s = 10 / _PACE_STEP_S  # a step is 10 items
    assert consume(list(range(1000)), per_s, t, [0.0] * 1000) == list(range(1000))
    # 1,000 items take 1,000 / per_s seconds, slept in 100 steps of 10 items each.
    assert t.now - 1000.0 == pytest.approx(1000 / per_s)
    assert len(t.sleeps) == 100 and max(t.sleeps) == pytest.approx(_PACE_STEP_S)


def test_work_slower_than_the_rate_is_not_slowed_further() -> None:
    t = FakeTime()
    consume(list(range(100)), 100, t, [0.02] * 100)
    assert t.sleeps == []


def test_a_consumer_that_fell_behind_does_not_catch_up_in_a_burst() -> None:
    t = FakeTime()
    # Half the items slow (twice the allowed time each), then the rest with no cost: the
    # fast half still takes its full share of time at the rate.
    consume(list(range(200)), 100, t, [0.02] * 100 + [0.0] * 100)
    assert sum(t.sleeps) == pytest.approx(1.0)


def test_a_low_rate_sleeps_after_every_item() -> None:
    t = FakeTime()
    consume(list(range(5)), 2, t, [0.0] * 5)
    assert t.sleeps == pytest.approx([0.5] * 5)
