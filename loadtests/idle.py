"""What idle CPUs do during a benchmark run: poll (a PM QoS request held) or halt.

At a low steady rate a proxy's core sleeps between requests. On a VM, a core that
halts hands the physical CPU back to the host, and the next request starts on cold
caches and TLBs; what that costs depends on the host's other tenants, not on the
code measured. On our CI VM (whose kernel sets `haltpoll.guest_halt_poll_ns=0`, so
idle CPUs halt at once) the same sidecar measured 152-371 µs of CPU per request at
500 requests/s across one day; in its slowest phase, 140 µs with idle CPUs polling.

Holding a PM QoS request of 0 µs on `/dev/cpu_dma_latency` (what tuned's
latency-performance profile and cyclictest do) makes the kernel's idle loop poll
instead of halting, for as long as the file stays open; the time spent polling is
the idle task's, never a measured process's. It applies to every path of a run
alike (direct, sidecar, bare proxy), like the harness's pinning. Without the right
to open the file, or with `--allow-halt`, the run says that idle CPUs halted.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

PM_QOS = "/dev/cpu_dma_latency"


@contextlib.contextmanager
def idle_cpus(poll: bool, path: str = PM_QOS) -> Iterator[str]:
    """Hold idle CPUs to polling for the block when `poll` and the platform allows; yields how."""
    if not poll:
        yield "halt (as the platform does; --allow-halt)"
        return
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        yield f"halt (could not hold a PM QoS request on {path}: {exc.strerror})"
        return
    try:
        os.write(fd, struct.pack("=i", 0))
        yield f"poll (PM QoS request of 0 µs held on {path} for the run)"
    finally:
        os.close(fd)  # closing the file drops the request
