"""What starting and stopping a `Service` costs, as the tests start hundreds of them.

    python -m loadtests.bench_service_start [--starts 10] [--demo]

Starts and stops a sidecar with `tests.servers.running_sidecar` `--starts` times in
a row (the first start is reported apart: it pays this process's one-off costs) and
reports each start's and stop's wall time and the CPU time of the control
processes it started (their own and their children's, read when they exit). With
`--demo` the sidecar has the bundled credit model's settings, so the control
process loads an explainer; without it, the settings most tests use (no artifact).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time
from typing import Any

from tests.servers import recording_upstream, running_sidecar


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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
            before = _children_cpu()
            t0 = time.perf_counter()
            with contextlib.ExitStack() as stack:
                svc = stack.enter_context(running_sidecar(up.url, **sections))
                t1 = time.perf_counter()
                assert svc.control is not None and svc.control.serving
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            stops.append(t2 - t1)
            cpu.append(_children_cpu() - before)
    print(f"load average {os.getloadavg()[0]:.2f}; first start {starts[0]:.3f} s")
    for name, values in (("start", starts[1:]), ("stop", stops[1:]), ("child cpu", cpu[1:])):
        print(
            f"{name:9s} median {statistics.median(values):.3f} s"
            f"  min {min(values):.3f}  max {max(values):.3f}  (n={len(values)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
