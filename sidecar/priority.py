"""Work that must never delay the data plane yields the CPU at once.

Linux sets both levers per thread, and a thread's children inherit them. Niceness
lowers a thread's share of a contended core, but the EEVDF scheduler (Linux 6.6
and later) lets a niced thread it has picked run out its slice before a data-plane
thread that wakes on the same core gets it: about a millisecond, which showed in
the proxy's p99 while `audit verify` ran beside it. The SCHED_IDLE policy has no
such slice: the kernel preempts an idle-policy thread as soon as a normal one wakes
on its core, and runs it only when nothing else wants the core.
"""

from __future__ import annotations

import contextlib
import os

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
