"""The delivery thread against a producer that cannot deliver: nothing piles up, a replay starts small.

A hung broker used to cost the proxy a ~350 ms stall at its delivery timeout: every
record sent meanwhile expired at once and the whole backlog was replayed in one go,
a burst of CPU on the delivery and I/O threads. The steps of the loop are driven
by hand here against a producer whose futures resolve when the test says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.metrics import Registry
from sidecar.sinks.delivery import _RESTART_WINDOW, Delivery
from sidecar.sinks.spool import Spool


class FakeFuture:
    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def add_both(self, f: Callable[..., Any], *args: Any) -> None:
        self._callbacks.append((f, args))

    def resolve(self, exc: BaseException | None = None) -> None:
        self.is_done, self.exception = True, exc
        for f, args in self._callbacks:
            f(*args, self)


class HungProducer:
    """Takes every record; answers only when the test resolves its futures."""

    def __init__(self) -> None:
        self.futures: list[FakeFuture] = []

    def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> Any:
        fut = FakeFuture()
        self.futures.append(fut)
        return fut

    def close(self, timeout: float | None = None) -> None:
        pass


def append(spool: Spool, start: int, n: int) -> None:
    for i in range(start, start + n):
        assert spool.append("decision", f"r{i}/0", f"e{i}", "2026-11-30T05:00:00.000000Z", b"{}")


def test_a_silent_broker_gets_no_more_records_and_a_replay_starts_with_a_window(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, Registry(), max_bytes=1 << 30, segment_bytes=1 << 20, fsync="never")
    spool.open()
    producer = HungProducer()
    delivery = Delivery(
        spool,
        lambda: producer,
        {"decision": "t"},
        lambda rec: [],
        Registry(),
        max_in_flight=20_000,
        retry_backoff_s=0.001,
        request_timeout_s=0.05,
        delivery_timeout_s=3600,
    )
    append(spool, 0, 1000)
    delivery._step()
    assert len(producer.futures) == 1000
    # No answer within request_timeout: what arrives now waits in the spool, not the producer.
    time.sleep(0.06)
    append(spool, 1000, 500)
    delivery._step()
    assert len(producer.futures) == 1000 and spool.unread()
    # The broker's error ends those 1000; the replay hands over one window of them.
    for fut in producer.futures:
        fut.resolve(TimeoutError("expired"))
    delivery._step()  # takes the failure, rewinds
    delivery._step()
    replay = producer.futures[1000:]
    assert len(replay) == _RESTART_WINDOW
    # Each acknowledgement widens the window by what it acknowledged.
    for fut in replay:
        fut.resolve()
    delivery._step()
    assert len(producer.futures) == 1000 + _RESTART_WINDOW + 2 * _RESTART_WINDOW
    for fut in producer.futures[1000:]:
        fut.resolve()
    while spool.unread() or delivery._inflight:
        delivery._step()
        for fut in producer.futures:
            if not fut.is_done:
                fut.resolve()
    assert spool.acked_seq == 1500  # everything delivered, in order, once the broker answers
    spool.close()
