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

The request acts through the cpuidle framework: on a VM without a cpuidle driver
(`/sys/devices/system/cpu/cpuidle/current_driver` reads `none`, or is absent) the
file still opens and takes the value, but the idle loop halts all the same. The run
then says so instead of claiming that idle CPUs polled.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

PM_QOS = "/dev/cpu_dma_latency"
CPUIDLE_DRIVER = "/sys/devices/system/cpu/cpuidle/current_driver"


def cpuidle_driver(path: str = CPUIDLE_DRIVER) -> str | None:
    """The kernel's cpuidle driver, or None when there is none (the PM QoS request is then inert)."""
    try:
        with open(path, encoding="ascii") as f:
            name = f.read().strip()
    except OSError:
        return None
    return None if name in ("", "none") else name


@contextlib.contextmanager
def idle_cpus(poll: bool, path: str = PM_QOS, driver_path: str = CPUIDLE_DRIVER) -> Iterator[str]:
    """Hold idle CPUs to polling for the block when `poll` and the platform allows; yields how."""
    if not poll:
        yield "halt (as the platform does; --allow-halt)"
        return
    driver = cpuidle_driver(driver_path)
    if driver is None:
        yield (
            f"halt (no cpuidle driver in {driver_path}: a PM QoS request would change nothing;"
            " idle CPUs do what the platform does)"
        )
        return
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        yield f"halt (could not hold a PM QoS request on {path}: {exc.strerror})"
        return
    try:
        os.write(fd, struct.pack("=i", 0))
        yield f"poll (PM QoS request of 0 µs held on {path} for the run; cpuidle driver {driver})"
    finally:
        os.close(fd)  # closing the file drops the request
