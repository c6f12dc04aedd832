"""Work that must never delay the data plane yields the CPU at once.

Linux sets both levers per thread, and a thread's children inherit them. Niceness
lowers a thread's share of a contended core, but the EEVDF scheduler (Linux 6.6
and later) lets a niced thread it has picked run out its slice before a data-plane
thread that wakes on the same core gets it: about a millisecond, which showed in
the proxy's p99 while `audit verify` ran beside it. The SCHED_IDLE policy has no
such slice: the kernel preempts an idle-policy thread as soon as a normal one wakes
on its core, and runs it only when nothing else wants the core.

No priority reaches what the two cores of a VM share underneath (the host's caches
and memory bandwidth, SMT siblings): batch work run flat out on the *other* core
still made each proxied request dearer by about a third here. Only doing less of
it per second helps there, so batch work over many items is also paced (`paced`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# The lowest niceness: the scheduler gives the thread time only when nothing else wants it.
LOWEST_NICE = 19


def lower_thread(tid: int, nice: int, idle: bool) -> None:
    """Raise thread `tid`'s niceness to `nice` (never lower it: no privilege needed), and
    put it under SCHED_IDLE when `idle` and the platform has it."""
    current = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, max(current, nice))
    if idle and hasattr(os, "SCHED_IDLE"):
        # Entering SCHED_IDLE needs no privilege either; a kernel without it keeps the niceness.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def lower_every_thread(nice: int, idle: bool) -> None:
    """`lower_thread` for every thread this process has now; threads they start later
    inherit it."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            lower_thread(int(tid), nice, idle)


def is_idle(tid: int) -> bool:
    """Whether thread `tid` runs under SCHED_IDLE."""
    return hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(tid) == os.SCHED_IDLE


# How often `paced` sleeps, in seconds of items at the given rate. The work between two
# sleeps is one burst on its core, and on a VM the length of a burst reaches a neighbour's
# tail below the guest's scheduler, SCHED_IDLE or not: on the project's VM, 3 ms of work
# every 100 ms on the sidecar's core took its p99 from 0.68 to 2.67 ms, 0.3 ms every 10 ms
# (the same share) from 0.57 to 0.72 (`python -m loadtests.burst --spin 3/100`). So the
# steps are short; each wake-up costs a little (cold caches: `audit verify` at 2,000
# records a second used 0.54 s of CPU for 20,000 records in 10 ms steps, 0.45 in 100 ms).
_PACE_STEP_S = 0.01


def paced(
    items: Iterable[T],
    per_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """`items`, at no more than `per_s` a second on average (0: as fast as they come).

    The consumer's work per item is spread over time, so it takes at most that share
    of a core, whatever its priority: the pace is kept from the start, in steps of
    about 10 ms (`_PACE_STEP_S`), and a consumer that falls behind is never made to
    catch up in a burst.
    """
    if per_s <= 0:
        yield from items
        return
    step = max(1, int(per_s * _PACE_STEP_S))
    start = clock()
    for n, item in enumerate(items, 1):
        yield item
        if n % step == 0:
            ahead = n / per_s - (clock() - start)
            if ahead > 0:
                sleep(ahead)
            else:
                start -= ahead  # behind (the consumer was slower): the pace restarts from now
