"""What starting and stopping a `Service` costs, as the tests start hundreds of them.

    python -m loadtests.bench_service_start [--starts 10] [--demo]

Starts and stops a sidecar with `tests.servers.running_sidecar` `--starts` times in
a row (the first start is reported apart: it pays this process's one-off costs) and
reports each start's and stop's wall time and the CPU time the control process had
used when the start returned (from /proc, just before the stop). With
`--demo` the sidecar has the bundled credit model's settings, so the control
process loads an explainer; without it, the settings most tests use (no artifact).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

from tests.servers import recording_upstream, running_sidecar


def _cpu(pid: int) -> float:
    """A process's user and system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_service_start")
    p.add_argument("--starts", type=int, default=10)
    p.add_argument("--demo", action="store_true", help="the bundled model's settings")
    args = p.parse_args(argv)
    sections: dict[str, Any] = {}
    if args.demo:
        from sidecar.demo.model import model_settings, people_settings

        sections = {**people_settings(), "model": model_settings()}
    starts: list[float] = []
    stops: list[float] = []
    cpu: list[float] = []
    with recording_upstream() as up:
        for _ in range(args.starts + 1):
            t0 = time.perf_counter()
            with contextlib.ExitStack() as stack:
                svc = stack.enter_context(running_sidecar(up.url, **sections))
                t1 = time.perf_counter()
                assert svc.control is not None and svc.control.serving
                assert svc.control.pid is not None
                cpu.append(_cpu(svc.control.pid))
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            stops.append(t2 - t1)
    print(f"load average {os.getloadavg()[0]:.2f}; first start {starts[0]:.3f} s")
    for name, values in (("start", starts[1:]), ("stop", stops[1:]), ("ctl cpu", cpu[1:])):
        print(
            f"{name:9s} median {statistics.median(values):.3f} s"
            f"  min {min(values):.3f}  max {max(values):.3f}  (n={len(values)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
