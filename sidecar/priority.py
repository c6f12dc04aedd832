"""Work that must never delay the data plane yields the CPU at once.

Linux sets both levers per thread, and a thread's children inherit them. Niceness
lowers a thread's share of a contended core, but the EEVDF scheduler (Linux 6.6
and later) lets a niced thread it has picked run out its slice before a data-plane
thread that wakes on the same core gets it: about a millisecond, which showed in
the proxy's p99 while `audit verify` ran beside it. The SCHED_IDLE policy has no
such slice: the kernel preempts an idle-policy thread as soon as a normal one wakes
on its core, and runs it only when nothing else wants the core.

Both only order threads *within one scheduling group*. With autogroup on
(`/proc/sys/kernel/sched_autogroup_enabled`, the default of most distributions'
kernels) every session (`setsid`) of a process in the root CPU cgroup is a group of
its own, and two groups share a core as equals whatever their threads' policies: a
SCHED_IDLE thread in another session is not preempted when a data-plane thread
wakes, but runs on until it blocks or the next tick (up to 4 ms at HZ=250). So the
processes the service starts (the control process, its fork server, the workers)
stay in its session, each in a process group of its own (off the terminal's Ctrl-C).
Until 2026-12-02 the control process had a session of its own: a wake-up of the
data plane's loop that found it running waited 0.1-2 ms in about half the cases
(`sched_waking` to `sched_switch`, traced with bpftrace), and the proxy's p99 read
1.26-1.33x with the control plane's calls on its core (`loadtests/RESULTS.md`). A
container's own cgroup (Kubernetes, Docker) is not the root cgroup and has no
autogroups, so a `kubectl exec` shares the sidecar's group; a command started from
another login session on a host where both run in the root cgroup does not, and only
its pace (`paced`) bounds it.

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
# sleeps is one burst on its core. From another session (the module's doc) a burst
# holds the core against the data plane for its length: on the project's VM, 3 ms of
# work every 100 ms in a session of its own took the sidecar's p99 from 0.68 to 2.67
# ms, 0.3 ms every 10 ms (the same share) from 0.57 to 0.72 (`python -m
# loadtests.burst --spin 3/100 --own-session`). So the steps are short; each wake-up
# costs a little (cold caches: `audit verify` at 2,000 records a second used 0.54 s of
# CPU for 20,000 records in 10 ms steps, 0.45 in 100 ms).
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
