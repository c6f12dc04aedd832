"""What a low-priority neighbour on the sidecar's core does to the sidecar's latency.

One open-loop load runs through the sidecar for the whole run; the run is cut into blocks
of `--block` seconds, and in every other block a command runs on the sidecar's own core, as
an operator's command in the sidecar's pod does (`kubectl exec` shares its CPU), under
SCHED_IDLE at niceness 19; it is killed when its block ends. Latencies are split by block
(on / off, paired in time) and by distance to the command's start, so one run tells a
neighbour's steady work from its start-up.

The neighbour runs in the benchmark's session, as the sidecar does (one scheduling group
under Linux's autogroup, as a container's processes are: `sidecar.priority`);
`--own-session` starts it in a session of its own, as a command from another login on a
host where both run in the root CPU cgroup, where its SCHED_IDLE orders it only within
that session.

    python -m loadtests.burst --command "SIDECAR audit verify --db DB"
    python -m loadtests.burst --spin 3/100    # 3 ms of CPU every 100 ms, nothing else

`SIDECAR` stands for the sidecar's command and `DB` for the review database the sidecar
serves (`--items` review items, as `bench_proxy --control-load` fills it). `--spin W/P`
runs a busy loop of W ms every P ms: the same share of a core in bursts of different
lengths (3/100 against 0.3/10) shows what the length of a burst costs a sidecar in another
scheduling group (`--own-session`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import uvloop

from loadtests.bench_proxy import _host_port, _sidecar_command, round_ratio_ci, write_config
from loadtests.control_load import prepare
from loadtests.loadgen import LoadResult, run_load
from loadtests.payloads import V2_PATH, v2_requests
from loadtests.procs import FastUpstreamProcess, SidecarProcess

START_WINDOW_S = 0.4


# Busy for argv[1] s, asleep for the rest of each argv[2] s, until killed; run with `-c` so
# the neighbour's start-up is a bare interpreter's, not this module's imports.
SPIN = """
import sys, time
work, period = float(sys.argv[1]), float(sys.argv[2])
while True:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < work:
        pass
    time.sleep(max(0.0, period - work))
"""


def _pct(a: np.ndarray) -> str:
    if not a.size:
        return "n 0"
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return f"n {a.size:6d}  p50 {p50:.3f}  p99 {p99:.3f}  p99.9 {p999:.3f}  max {a.max():.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--command", help="the neighbour: a shell command (SIDECAR, DB stand in)")
    what.add_argument("--spin", metavar="W/P", help="the neighbour: busy W ms every P ms")
    parser.add_argument("--duration", type=float, default=80.0, help="seconds of load in all")
    parser.add_argument("--block", type=float, default=10.0, help="seconds per block")
    parser.add_argument("--rate", type=float, default=500.0, help="requests a second")
    parser.add_argument("--items", type=int, default=20000, help="review items in DB")
    parser.add_argument(
        "--own-session",
        action="store_true",
        help="start the neighbour in a session of its own (a scheduling group of its own"
        " under autogroup) rather than in the sidecar's",
    )
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        parser.error("needs two cores: the load and upstream on one, the sidecar on the other")
    near, far = {cores[0]}, {cores[1]}
    os.sched_setaffinity(0, near)
    work = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    sidecar_cmd = _sidecar_command()
    if args.spin:
        w, p = (float(x) / 1000 for x in args.spin.split("/"))
        neighbour = [sys.executable, "-c", SPIN, str(w), str(p)]
        label = f"busy {w * 1000:g} ms every {p * 1000:g} ms"
    else:
        text = args.command.replace("SIDECAR", shlex.join(sidecar_cmd))
        neighbour = ["sh", "-c", text.replace("DB", shlex.quote(str(work / "review.db")))]
        label = neighbour[-1]
    neighbour = [
        "taskset",
        "-c",
        str(cores[1]),
        "chrt",
        "--idle",
        "0",
        "nice",
        "-n",
        "19",
        *neighbour,
    ]

    upstream = FastUpstreamProcess(cpus=near)
    sidecar: SidecarProcess | None = None
    blocks: list[tuple[float, bool]] = []
    starts: list[float] = []
    stop = threading.Event()

    def alternate() -> None:
        on = False
        while not stop.is_set():
            began = time.perf_counter()
            blocks.append((began, on))
            proc = None
            if on:
                starts.append(began)
                proc = subprocess.Popen(
                    neighbour,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    # Its own process group either way, so that the kill reaches all of it.
                    start_new_session=args.own_session,
                    process_group=None if args.own_session else 0,
                    cwd=Path(__file__).resolve().parent.parent,
                )
            stop.wait(args.block)
            if proc is not None:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            on = not on

    try:
        url = upstream.start()
        extra: dict[str, dict[str, object]] = {"sampling": {"rate": 0}}
        for section, values in prepare(work, args.items).items():
            extra.setdefault(section, {}).update(values)
        write_config(work / "sidecar.toml", url, extra)
        sidecar = SidecarProcess(sidecar_cmd, work / "sidecar.toml", work, work / "log", far)
        proxy = sidecar.start()["proxy"]
        requests = v2_requests(*_host_port(proxy))
        t0 = time.perf_counter()
        threading.Thread(target=alternate, daemon=True).start()
        result = uvloop.run(run_load(proxy + V2_PATH, requests, args.rate, args.duration))
        stop.set()
    finally:
        if sidecar is not None:
            sidecar.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)

    lat = np.asarray(result.latencies) * 1000.0
    at = np.asarray(result.starts) + t0
    begun = np.array([b for b, _ in blocks])
    block = np.searchsorted(begun, at, side="right") - 1
    on_mask = np.array([blocks[k][1] if k >= 0 else False for k in block])
    after_start = np.zeros(lat.size, bool)
    for s in starts:
        after_start |= (at >= s) & (at < s + START_WINDOW_S)

    def by_block(want: bool) -> list[LoadResult]:
        out = []
        for k, (_, on) in enumerate(blocks):
            if on == want and (block == k).any():
                r = LoadResult(rate=args.rate, duration_s=args.block)
                r.latencies = list(lat[block == k] / 1000.0)
                out.append(r)
        return out

    off_blocks, on_blocks = by_block(False), by_block(True)
    session = "a session of its own" if args.own_session else "the sidecar's session"
    print(f"neighbour, on cpu {cores[1]} under SCHED_IDLE at nice 19, in {session}: {label}")
    print(f"{args.rate:.0f} requests/s for {args.duration:.0f} s, blocks of {args.block:.0f} s")
    print(f"  neighbour on:  {_pct(lat[on_mask])}")
    print(f"  neighbour off: {_pct(lat[~on_mask])}")
    print(f"  within {START_WINDOW_S} s of its start: {_pct(lat[after_start])}")
    for q, name in ((50, "p50"), (99, "p99")):
        ratio = np.percentile(lat[on_mask], q) / np.percentile(lat[~on_mask], q)
        lo, hi = round_ratio_ci(off_blocks, on_blocks, q)
        print(
            f"  {name} on / off: {ratio:.2f}x (95% interval over resampled blocks {lo:.2f}-{hi:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
