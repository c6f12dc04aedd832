"""Where the sidecar's CPU goes near saturation: py-spy samples, bucketed by what the code does.

    python -m loadtests.profile_proxy --rate 3000 --seconds 15 [--set sampling.rate=0]

Starts the fast upstream and `sidecar serve` in front of it, pinned as `bench_proxy`
pins them (load generator and upstream on the first core, the sidecar on the second),
drives the sidecar open loop at `--rate` and samples it with py-spy (`record --format raw
--nonblocking --gil`: the stack of whichever thread holds the interpreter) for
`--seconds`, after `--warm` seconds of the same load (the explainer compiles its kernels
on the first sampled rows). Each sample is put in one bucket by its innermost frame that
belongs to one (`BUCKETS`, first match from the leaf), and each bucket's share of the
samples is turned into µs per request with the sidecar's own CPU time over the same
seconds (/proc). A bucket's µs are an estimate (system calls are charged to the Python
frame that made them, uvloop's C code to the loop's frame); the total is measured.

py-spy comes with the `bench` extra (`pip install -e .[bench]`); it reads the sidecar's
memory from outside, which needs ptrace permission (root, or
`kernel.yama.ptrace_scope = 0`).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import uvloop

from loadtests.bench_proxy import (
    LOCK_PATH,
    _exclusive,
    _host_port,
    _sidecar_command,
    parse_set,
    write_config,
)
from loadtests.loadgen import run_load
from loadtests.payloads import V2_PATH, v2_requests
from loadtests.procs import FastUpstreamProcess, SidecarProcess, cpu_seconds

# (bucket, file pattern, function pattern): matched against a frame's file and function,
# innermost frame first; the first bucket any frame matches takes the sample. Order matters
# where a frame could match two (the background thread's stages before the sinks they call).
BUCKETS: list[tuple[str, str, str]] = [
    ("lookup store", r"control/store\.py", r".*"),
    ("sinks (events written)", r"sinks/(?!events)", r".*"),
    ("event bodies", r"sinks/events\.py", r".*"),
    ("explain (TreeSHAP, sampled rows)", r"pipeline/explain\.py|explainers/|numba|llvmlite", r".*"),
    ("background stages", r"pipeline/(stages|sampling|routing)\.py", r".*"),
    ("background thread (poll, hand-off)", r"pipeline/queue\.py", r"_run|_run_stage"),
    ("enqueue (submit)", r"pipeline/queue\.py", r".*"),
    ("group attributes", r"dataplane/groups\.py", r".*"),
    ("parse (protocols/: rows, predictions, confidences)", r"dataplane/protocols/", r".*"),
    ("decide (answer's JSON, decisions, routing)", r"dataplane/decide\.py", r"decide$"),
    ("decide (decision objects, ids)", r"sidecar/decisions\.py", r".*"),
    ("read request (JSON, group field)", r"dataplane/decide\.py", r".*"),
    ("headers (forwarded, answer)", r"dataplane/headers\.py", r".*"),
    ("forward (upstream client)", r"dataplane/(upstream|client|connection|streamed)\.py", r".*"),
    ("answer (respond, write)", r"dataplane/exchange\.py", r"respond|start|write|end"),
    ("http server (parse head, body)", r"dataplane/(server|exchange|limits)\.py", r".*"),
    ("request path (http.py)", r"dataplane/http\.py", r".*"),
    ("metrics", r"sidecar/metrics\.py", r".*"),
    ("control plane", r"sidecar/control/|uvicorn|starlette|fastapi", r".*"),
    # The loop's own frame: uvloop's C code (sockets, callbacks) runs under it.
    ("event loop (asyncio, uvloop)", r"asyncio/|uvloop|commands/serve\.py", r".*"),
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def classify(stack: str) -> str:
    """The bucket of one raw py-spy stack (`outer;...;inner`), innermost matching frame first."""
    frames = stack.split(";")
    compiled = _compiled()
    for frame in reversed(frames):
        m = _FRAME.match(frame.strip())
        if m is None:
            continue
        func, file = m.group("func"), m.group("file")
        for name, file_re, func_re in compiled:
            if file_re.search(file) and func_re.search(func):
                return name
    return "other"


_CACHE: list[tuple[str, re.Pattern[str], re.Pattern[str]]] = []


def _compiled() -> list[tuple[str, re.Pattern[str], re.Pattern[str]]]:
    if not _CACHE:
        _CACHE.extend((n, re.compile(f), re.compile(g)) for n, f, g in BUCKETS)
    return _CACHE


# The frames that call `transport.write`: a sample whose innermost frame is one of them is
# in the socket write (a loopback send runs the receiver's TCP path in the sender's time).
_WRITES = re.compile(r"^(HttpConnection\.write|Connection\.start|Connection\.write) \(")
WRITES = "socket writes (within the buckets above)"


def breakdown(raw: str) -> Counter[str]:
    """Samples per bucket from py-spy's raw (collapsed-stack) output; `WRITES` counts, apart,
    the samples (already in a bucket) taken in a socket write."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[classify(stack)] += int(n)
        if _WRITES.match(stack.rpartition(";")[2].strip()):
            counts[WRITES] += int(n)
    return counts


def report(counts: Counter[str], cpu_us_per_req: float) -> str:
    writes = counts.get(WRITES, 0)
    buckets = Counter({k: v for k, v in counts.items() if k != WRITES})
    total = sum(buckets.values()) or 1
    lines = [f"{'bucket':48}{'samples':>9}{'share':>8}{'µs/req':>9}"]
    for name, n in buckets.most_common():
        lines.append(f"{name:48}{n:>9}{n / total:>8.1%}{cpu_us_per_req * n / total:>9.1f}")
    lines.append(
        f"{WRITES:48}{writes:>9}{writes / total:>8.1%}{cpu_us_per_req * writes / total:>9.1f}"
    )
    lines.append(
        f"{'total (measured CPU per request)':48}{total:>9}{1:>8.0%}{cpu_us_per_req:>9.1f}"
    )
    return "\n".join(lines)


_SPY: list[subprocess.Popen[str]] = []


async def _load(
    url: str, reqs: list[bytes], args: argparse.Namespace, pid: int, spy_cmd: list[str]
) -> tuple[int, float]:
    """Warm the sidecar (its explainer compiles its kernels on the first sampled rows), then
    load it while py-spy samples; its CPU over the sampled seconds."""
    await run_load(url, reqs, args.rate, args.warm)
    # Started between the two loads: it attaches within the first tenth of a second.
    _SPY.append(
        subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    )
    before = cpu_seconds(pid)
    result = await run_load(url, reqs, args.rate, args.seconds)
    return len(result.latencies), cpu_seconds(pid) - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.profile_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--rate", type=float, default=3000.0, help="requests per second (open loop)"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="profiled seconds")
    parser.add_argument("--sample-rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="sample threads that do not hold the GIL too (default: --gil, so a thread parked"
        " in epoll or a lock wait, which py-spy cannot always tell from a running one, is not counted)",
    )
    parser.add_argument("--warm", type=float, default=5.0, help="seconds of load before sampling")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that runs the sidecar"
    )
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw output here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: pip install -e .[bench]")
    cores = sorted(os.sched_getaffinity(0))
    near = {cores[0]} if len(cores) >= 2 else None
    far = {cores[1]} if len(cores) >= 2 else None
    work = Path(tempfile.mkdtemp(prefix="profile-proxy-"))
    raw_path = args.raw or work / "profile.txt"
    with _exclusive(LOCK_PATH):
        if near:
            os.sched_setaffinity(0, near)
        upstream = FastUpstreamProcess(cpus=near)
        sidecar: SidecarProcess | None = None
        try:
            upstream_url = upstream.start()
            config = work / "sidecar.toml"
            write_config(config, upstream_url, parse_set(args.set))
            sidecar = SidecarProcess(
                _sidecar_command(args.python), config, work, work / "sidecar.log", far
            )
            urls = sidecar.start()
            reqs = v2_requests(*_host_port(urls["proxy"]))
            cmd = [py_spy, "record", "--pid", str(sidecar.pid), "--rate", str(args.sample_rate),
                   "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(raw_path)]  # fmt: skip
            # Native stacks need the process paused per sample; Python stacks do not.
            cmd.append("--native" if args.native else "--nonblocking")
            if not args.all_threads:
                cmd.append("--gil")
            served, cpu = uvloop.run(_load(urls["proxy"] + V2_PATH, reqs, args, sidecar.pid, cmd))
            spy = _SPY[0]
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed ({spy.returncode}): {err.strip()[-500:]}")
        finally:
            if sidecar is not None:
                sidecar.stop()
            upstream.stop()
            os.sched_setaffinity(0, set(cores))
    counts = breakdown(raw_path.read_text())
    cpu_us = 1e6 * cpu / max(served, 1)
    print(
        f"rate {args.rate:.0f}/s for {args.seconds:.0f} s, {served} answered;"
        f" sidecar CPU {cpu_us:.1f} µs per request ({cpu / args.seconds:.0%} of a core);"
        f" settings: {' '.join(args.set) or 'defaults'}; command:"
        f" python -m loadtests.profile_proxy {shlex.join(argv or sys.argv[1:])}"
    )
    print(report(counts, cpu_us))
    print(f"raw stacks: {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
