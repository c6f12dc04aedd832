"""What each control-plane op costs the data plane's process, in CPU time of its bridge thread.

    python -m loadtests.bench_bridge [--decisions 100000] [--calls 2000]

Builds a real `Service` (not started: its registry, decision store and sink are the
ones the data plane would answer from), fills the decision store, and answers the
ops of `Service._bridge_ops` on a `BridgeServer` over a socket pair, as the data
plane does. For each op it reports the bridge thread's CPU time per call (read
from the thread's own CPU clock, so the client's side, in this process too, is not
counted) and the round trip as the client sees it. The bridge thread's CPU is what
the control plane takes from the data plane's process per op.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar.config import load_settings
from sidecar.control.bridge import BridgeClient, BridgeServer
from sidecar.control.metrics_view import CONTROL_GAUGES
from sidecar.decisions import Decision
from sidecar.service import Service


def _decision(i: int) -> Decision:
    return Decision(
        call_id=f"{i:032x}",
        row=0,
        time=time.time(),
        protocol="v2",
        model_name="credit",
        model_version="1",
        features=[0.5] * 8,
        feature_names=[f"f{j}" for j in range(8)],
        prediction=0,
        probabilities=[0.45, 0.55],
        confidence=0.55,
        upstream_status=200,
        upstream_latency_ms=1.0,
        request_id=f"req-{i % 1000}",
        group_attributes={"gender": "F" if i % 2 else "M"},
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_bridge")
    p.add_argument("--decisions", type=int, default=100_000)
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    settings = load_settings(
        environ={},
        overrides={
            "proxy": {"port": 0, "upstream": "http://127.0.0.1:9"},
            "control": {"port": 0},
            "sink": {"directory": str(work / "events")},
            "review": {"db_path": str(work / "review.db")},
            "decisions": {"retention": args.decisions},
        },
    )
    service = Service(settings)
    for start in range(0, args.decisions, 1000):
        service.store.add([_decision(i) for i in range(start, start + 1000)])
    ours, theirs = socket.socketpair()
    server = BridgeServer(ours, ops=service._bridge_ops())
    client = BridgeClient(theirs)
    server.start()
    client.start()
    clock = time.pthread_getcpuclockid(server._thread.ident or 0)
    skip = sorted(CONTROL_GAUGES)
    cases: dict[str, tuple[Any, ...]] = {
        "decision (hit)": ("decision", f"{args.decisions - 7:032x}/0"),
        "decision (miss)": ("decision", f"{10**9:032x}/0"),
        "by_request (100)": ("by_request", "req-5", None, 100),
        "newest_forgotten": ("newest_forgotten",),
        "metrics": ("metrics", skip),
    }
    out: dict[str, dict[str, float]] = {}
    for name, (op, *op_args) in cases.items():
        for _ in range(100):  # warm
            client.call(op, *op_args)
        walls: list[float] = []
        cpu0 = time.clock_gettime(clock)
        for _ in range(args.calls):
            t0 = time.perf_counter()
            client.call(op, *op_args)
            walls.append(time.perf_counter() - t0)
        cpu = (time.clock_gettime(clock) - cpu0) / args.calls
        out[name] = {
            "data_plane_cpu_us": 1e6 * cpu,
            "round_trip_p50_us": 1e6 * statistics.median(walls),
        }
        print(
            f"{name:18s} data-plane CPU {1e6 * cpu:7.1f} µs per op,"
            f" round trip p50 {1e6 * statistics.median(walls):7.1f} µs"
        )
    families = len(client.call("metrics", skip))
    print(f"(metrics: {families} families; store: {len(service.store)} decisions)")
    client.close()
    server.close()
    service.sink.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
