"""The proxy benchmark: the same load direct and through the sidecar, alternating, in one run.

    python -m loadtests.bench_proxy --scenario fast|model --rate 500 --duration 30

Starts the upstream (`fast`: a fixed-response V2 server that shows the sidecar's own cost;
`model`: the demo onnxruntime model server) and `sidecar serve` in front of it, warms both
paths, then runs `--rounds` rounds of `duration / rounds` seconds per path, alternating
the order (ABBA) so drift in the machine hits both paths alike. Prints requests/s and
p50/p99/p99.9 for each path, what the sidecar adds, the ratios, and the sidecar's CPU time
per request (utime + stime from /proc over its rounds). Writes the whole result as JSON
to loadtests/results/.

A fourth path, nginx (one worker, upstream keep-alive 32, access log off, pinned like the
sidecar; `loadtests/nginx.py`, `--no-nginx` to leave it out), is the reference: the report
gives the sidecar's CPU per request as a ratio to nginx's and to the bare proxy's.

A third path, a bare byte-pipe proxy (`loadtests.bare_proxy`, pinned like the sidecar),
runs in the same rotation: its CPU per request is what this machine charges any proxy
for the two sockets and wake-ups at that moment, so the sidecar's figure can be read
against a baseline measured in the same run (`--no-bare` leaves it out). On a VM whose
neighbours come and go, absolute CPU figures move by ±20% between runs; that difference
moves much less.

With two or more cores the load generator and the upstream share the first core and the
sidecar gets the second: the direct path is then undisturbed by the sidecar's background
stages, and the sidecar's cost is what it takes of a core of its own (`--no-pin` to
turn this off). For the same reason idle CPUs are held to polling for the run where the
platform allows it (loadtests/idle.py; `--allow-halt` to let them halt): on a VM, a core
that halts between requests makes the next one pay for the host's other tenants.

`--slowloris N` adds a path: the same sidecar loaded while N slowloris connections and N
stalled bodies are held open against it (loadtests/slowloris.py); the report gives its
p99 against the quiet sidecar's in the same run, and how often the control plane answered.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from loadtests import saturation
from loadtests.control_load import CONSOLE_OFFSET_S, FLOOR_PART, PARTS, ControlLoad, prepare
from loadtests.idle import idle_cpus
from loadtests.loadgen import LoadResult, run_load
from loadtests.nginx import NginxProcess
from loadtests.payloads import V2_PATH, v2_requests
from loadtests.procs import (
    BareProxyProcess,
    FastUpstreamProcess,
    SidecarProcess,
    cpu_seconds,
    data_plane_cpu_seconds,
    pin_descendants,
    start_model_server,
)
from loadtests.slowloris import HostileLoad
from sidecar.commands.audit import LOCAL_RECORDS_PER_S
from sidecar.demo.model import model_settings

# Counters worth a line in the report: what was recorded, explained, shed or spooled.
_COUNTED = re.compile(r"decisions_total|shed|explanations?_total|events?_.*total|spool|review")
# Past this the generator itself was descheduled: other work on the box shows in the tails.
_LAG_WARN_MS = 10.0
LOCK_PATH = Path(tempfile.gettempdir()) / "sidecar-bench.lock"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGETS_FAST = {"added_p50_ms": 0.5, "added_p99_ms": 2.0, "sidecar_cpu_us_per_req": 200.0}
_REPO = Path(__file__).resolve().parent.parent


def _own_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the sidecar's data plane: `pid` (all its threads) and its
    worker processes with `proxy.workers` > 1; not the control process."""
    return data_plane_cpu_seconds(pid)


def _sidecar_command(python: str = sys.executable) -> list[str]:
    exe = Path(python).with_name("sidecar")
    return [str(exe)] if exe.exists() else [python, "-m", "sidecar.cli"]


def _interpreter(python: str) -> dict[str, str]:
    """Which Python runs the sidecar: its build moves the CPU figure as much as our code does."""
    out = subprocess.run(
        [python, "-c", "import json, platform, sys; print(json.dumps("
         "{'version': platform.python_version(), 'executable': sys.executable,"
         " 'build': sys.version}))"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    described: dict[str, str] = json.loads(out)
    return described


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def write_config(path: Path, upstream: str, extra: dict[str, dict[str, Any]]) -> None:
    """A sidecar config on free ports in front of `upstream`, describing the demo model."""
    sections: dict[str, dict[str, Any]] = {
        "proxy": {"port": 0, "upstream": upstream},
        "control": {"port": 0},
        "model": model_settings(),
    }
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`section.key=value` pairs (value parsed as JSON when it parses, else a string)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if value is None:
            raise SystemExit(f"--set {item!r}: TOML has no null; leave the key out for its default")
        out.setdefault(section, {})[name] = value
    return out


def _combine(results: list[LoadResult]) -> dict[str, Any]:
    lat = np.concatenate([np.asarray(r.latencies) for r in results]) * 1000.0
    elapsed = sum(r.elapsed_s for r in results)
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9]) if lat.size else (np.nan,) * 3
    return {
        "requests": int(lat.size),
        "seconds": elapsed,
        "rps": lat.size / elapsed if elapsed else 0.0,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "p999_ms": float(p999),
        "max_ms": float(lat.max()) if lat.size else None,
        "non_2xx": sum(n for r in results for s, n in r.statuses.items() if not 200 <= s < 300),
        "errors": sum(r.errors + r.unanswered for r in results),
        "reconnects": sum(r.reconnects for r in results),
        "unsolicited": sum(r.unsolicited for r in results),
        "backlogged": sum(r.backlogged for r in results),
        "loadgen_lag_max_ms": max(r.summary()["lag_max_ms"] for r in results),
        "loadgen_cpu_us_per_req": 1e6
        * sum(r.cpu_s for r in results)
        / max(sum(r.sent for r in results), 1),
        "round_p50_ms": [r.summary().get("p50_ms") for r in results],
        # Where the tail came from: a stall at a round's start is warm-up, a regular beat a timer.
        "slowest": [{"round": i, **s} for i, r in enumerate(results) for s in r.slowest(3)],
    }


def _metrics(control_url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{control_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "_bucket{" in line or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _verify_chain(args: argparse.Namespace) -> int:
    """Audit records enough for one `audit verify` at its pace to last every `+control`
    round (a fifth to spare), so no round measures a check's start-up; flat out, no check
    can last, and the review items' own records do."""
    pace = LOCAL_RECORDS_PER_S if args.verify_pace is None else args.verify_pace
    if "verify" not in args.control_parts.split(",") or pace <= 0:
        return 0
    return int(pace * args.duration * 1.2)


async def _rounds(
    urls: dict[str, str],
    args: argparse.Namespace,
    pids: dict[str, int],
    control_load: ControlLoad | None = None,
    hostile: HostileLoad | None = None,
) -> dict[str, Any]:
    """Load each path (`direct`, `sidecar`, optionally `bare` and `sidecar+control`) in rotating, alternating rounds.

    `sidecar+control` is the same sidecar as `sidecar`, loaded while `control_load` works
    its control plane: the two paths' tails, side by side, are the interference.
    """
    names = list(urls)
    reqs = {name: v2_requests(*_host_port(url)) for name, url in urls.items()}
    targets = {name: url + V2_PATH for name, url in urls.items()}
    warm = min(2.0, args.duration / args.rounds)
    for name in names:
        await run_load(targets[name], reqs[name], args.rate, warm, args.connections)

    per_round = args.duration / args.rounds
    results: dict[str, list[LoadResult]] = {name: [] for name in names}
    # CPU of each measured process (the sidecar, the bare proxy) over its own rounds, and
    # the sidecar's over the other paths' rounds (idle ticks, background stages catching up).
    cpu_hot = dict.fromkeys(pids, 0.0)
    cpu_idle = 0.0
    # The sidecar's own process alone (its control process left out) over the quiet and the
    # +control rounds: what the control plane's work takes from the data plane's process,
    # in CPU time, which a busy machine disturbs far less than it disturbs the tails.
    own_cpu = {"sidecar": 0.0, "sidecar+control": 0.0}
    # The sidecar's control process over the same rounds: what the control plane's work
    # itself took of the core the two share.
    ctl_cpu = {"sidecar": 0.0, "sidecar+control": 0.0}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            before = {p: cpu_seconds(pid) for p, pid in pids.items()}
            own_before = _own_cpu_seconds(pids["sidecar"])
            side: ControlLoad | HostileLoad | None = None
            if name == "sidecar+control":
                side = control_load
            elif name == "sidecar+hostile":
                side = hostile
            if side is not None:
                side.start()
            results[name].append(
                await run_load(targets[name], reqs[name], args.rate, per_round, args.connections)
            )
            if side is not None:
                side.stop()
            if name in pids:
                used = cpu_seconds(pids[name]) - before[name]
                cpu_hot[name] += used
                if name in own_cpu:
                    # Both sidecar paths are the sidecar's pid: `used` is its process and
                    # its control process together.
                    own = _own_cpu_seconds(pids["sidecar"]) - own_before
                    own_cpu[name] += own
                    ctl_cpu[name] += used - own
            if pids.get(name) != pids["sidecar"]:
                # The sidecar's background stages and timers over every other path's rounds
                # (direct and bare alike), not only the direct path's.
                cpu_idle += cpu_seconds(pids["sidecar"]) - before["sidecar"]
    combined = {name: _combine(results[name]) for name in names}
    d, s = combined["direct"], combined["sidecar"]
    out: dict[str, Any] = {
        **combined,
        "added_p50_ms": s["p50_ms"] - d["p50_ms"],
        "added_p99_ms": s["p99_ms"] - d["p99_ms"],
        "added_p999_ms": s["p999_ms"] - d["p999_ms"],
        "ratio_p50": s["p50_ms"] / d["p50_ms"],
        "ratio_p99": s["p99_ms"] / d["p99_ms"],
        "ratio_p999": s["p999_ms"] / d["p999_ms"],
        "ratio_rps": s["rps"] / d["rps"] if d["rps"] else None,
        "sidecar_cpu_us_per_req": 1e6 * cpu_hot["sidecar"] / max(s["requests"], 1),
        "sidecar_cpu_between_rounds_us_per_req": 1e6 * cpu_idle / max(s["requests"], 1),
    }
    if "sidecar+control" in combined:
        c = combined["sidecar+control"]
        out["control_load"] = {
            "added_p99_ms": c["p99_ms"] - d["p99_ms"],
            "ratio_p99_to_quiet_sidecar": c["p99_ms"] / s["p99_ms"],
            "ratio_p50_to_quiet_sidecar": c["p50_ms"] / s["p50_ms"],
            # The noise: how far the same ratio moves over resamplings of the rounds.
            "ratio_p99_ci95": round_ratio_ci(results["sidecar"], results["sidecar+control"], 99),
            "ratio_p50_ci95": round_ratio_ci(results["sidecar"], results["sidecar+control"], 50),
            "work_done": dict(control_load.counts) if control_load is not None else {},
            "tail_near_calls": _tail_near_each(
                results["sidecar"],
                results["sidecar+control"],
                control_load.calls if control_load is not None else {},
            ),
            "control_on": args.control_on,
            "control_parts": args.control_parts,
            "verify_pace": args.verify_pace,
            "console_offset_s": args.console_offset,
            "verify_chain_records": _verify_chain(args),
            "data_plane_cpu_us_per_req_quiet": 1e6 * own_cpu["sidecar"] / max(s["requests"], 1),
            "data_plane_cpu_us_per_req_working": 1e6
            * own_cpu["sidecar+control"]
            / max(c["requests"], 1),
            # ms of CPU a second of round, summed over the rounds of each kind.
            "control_process_cpu_ms_per_s_quiet": 1e3
            * ctl_cpu["sidecar"]
            / max(s["seconds"], 1e-9),
            "control_process_cpu_ms_per_s_working": 1e3
            * ctl_cpu["sidecar+control"]
            / max(c["seconds"], 1e-9),
        }
    if "sidecar+hostile" in combined:
        h = combined["sidecar+hostile"]
        out["hostile_load"] = {
            "added_p99_ms": h["p99_ms"] - d["p99_ms"],
            "added_p99_over_quiet_sidecar_ms": h["p99_ms"] - s["p99_ms"],
            "ratio_p99_to_quiet_sidecar": h["p99_ms"] / s["p99_ms"],
            "ratio_added_p99_to_quiet_sidecar": (h["p99_ms"] - d["p99_ms"])
            / max(s["p99_ms"] - d["p99_ms"], 1e-9),
            "held": dict(hostile.counts) if hostile is not None else {},
        }
    if "bare" in combined:
        bare = 1e6 * cpu_hot["bare"] / max(combined["bare"]["requests"], 1)
        out["bare_cpu_us_per_req"] = bare
        out["sidecar_cpu_over_bare_us_per_req"] = out["sidecar_cpu_us_per_req"] - bare
        out["sidecar_cpu_ratio_to_bare"] = out["sidecar_cpu_us_per_req"] / bare if bare else None
    if "base" in combined:
        base = 1e6 * cpu_hot["base"] / max(combined["base"]["requests"], 1)
        out["base_cpu_us_per_req"] = base
        out["sidecar_cpu_ratio_to_base"] = out["sidecar_cpu_us_per_req"] / base if base else None
    if "nginx" in combined:
        ngx = 1e6 * cpu_hot["nginx"] / max(combined["nginx"]["requests"], 1)
        out["nginx_cpu_us_per_req"] = ngx
        out["sidecar_cpu_ratio_to_nginx"] = out["sidecar_cpu_us_per_req"] / ngx if ngx else None
    return out


def round_ratio_ci(
    quiet: list[LoadResult], working: list[LoadResult], q: float, draws: int = 2000
) -> tuple[float, float]:
    """A 95% interval for percentile `q` of `working` over that of `quiet`, by a paired
    bootstrap over rounds: round r of each path ran side by side in time, so resampling
    round indices (with replacement) keeps the machine's drift paired, and the interval
    says how much of the ratio one run's rounds could give by chance. Excluding 1.0, the
    difference is more than noise."""
    a = [np.asarray(r.latencies) for r in quiet]
    b = [np.asarray(r.latencies) for r in working]
    rounds = min(len(a), len(b))
    rng = np.random.default_rng(0)
    ratios = np.empty(draws)
    for k in range(draws):
        pick = rng.integers(0, rounds, rounds)
        ratios[k] = np.percentile(np.concatenate([b[i] for i in pick]), q) / np.percentile(
            np.concatenate([a[i] for i in pick]), q
        )
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


# A request in flight up to this long after a control call's end is near it (the report
# says so in these words).
NEAR_MARGIN_S = 0.002


def _tail_near_each(
    quiet: list[LoadResult], working: list[LoadResult], calls: dict[str, list[tuple[float, float]]]
) -> dict[str, dict[str, Any]]:
    """`tail_near_calls` for all the calls together (`all`) and for each path's."""
    out = {"all": tail_near_calls(quiet, working, [c for cs in calls.values() for c in cs])}
    for path, cs in sorted(calls.items()):
        out[path] = tail_near_calls(quiet, working, cs)
    return out


def tail_near_calls(
    quiet: list[LoadResult],
    working: list[LoadResult],
    calls: list[tuple[float, float]],
    margin_s: float = NEAR_MARGIN_S,
) -> dict[str, Any]:
    """Whether the working path's slow requests line up with the control plane's calls.

    A request is near a call when it was in flight from the call's start until `margin_s`
    after its end (`calls` are the clients' start and end times, on the generator's
    monotonic clock, as the requests' are). Of the working rounds' requests slower than
    the quiet rounds' p99, the share near a call, against the share of all its requests
    near one: equal shares say the slow ones were slow whenever they ran (colder caches, a
    busier core), a larger share that the calls' own bursts delayed them."""
    threshold = 1000.0 * float(np.percentile(np.concatenate([r.latencies for r in quiet]), 99))
    ordered = np.asarray(sorted(calls)).reshape(-1, 2)
    starts = ordered[:, 0]
    # The latest end of any call started by each start: calls of two clients may overlap.
    ends = np.maximum.accumulate(ordered[:, 1]) + margin_s
    total = slow = slow_near = near = 0
    # Where each near request started against its call: already in flight when the call
    # began, during the call, or in the margin after it; for the slow ones and for all.
    phases = ("before", "during", "after")
    by_phase = {f"{w}_{ph}": 0 for w in ("slow", "all") for ph in phases}
    for r in working:
        a = r.t0 + np.asarray(r.starts)
        lat = np.asarray(r.latencies)
        b = a + lat
        idx = np.searchsorted(starts, b, side="right") - 1
        at = np.maximum(idx, 0)
        hit = (idx >= 0) & (ends[at] >= a) if starts.size else np.zeros(a.size, dtype=bool)
        over = lat * 1000.0 > threshold
        total += a.size
        near += int(hit.sum())
        slow += int(over.sum())
        slow_near += int((hit & over).sum())
        if starts.size:
            phase = np.where(a < starts[at], 0, np.where(a <= ends[at] - margin_s, 1, 2))
            for i, ph in enumerate(phases):
                by_phase[f"all_{ph}"] += int((hit & (phase == i)).sum())
                by_phase[f"slow_{ph}"] += int((hit & over & (phase == i)).sum())
    durations = ordered[:, 1] - ordered[:, 0]
    return {
        "quiet_p99_ms": threshold,
        "slow": slow,
        "slow_share": slow / max(total, 1),
        "slow_near_calls": slow_near,
        "share_of_slow_near_calls": slow_near / max(slow, 1),
        "share_of_all_near_calls": near / max(total, 1),
        "calls": len(calls),
        "call_ms_p50": 1000.0 * float(np.median(durations)) if durations.size else 0.0,
        "near_by_phase": by_phase,
    }


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        # Other work on the box skews every figure: record how busy it was.
        "loadavg_1m": os.getloadavg()[0],
    }


def _header(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"scenario {result['scenario']}  pinning: {result['pinning']}",
            f"idle cpus: {result.get('idle_cpus', 'halt')}",
            f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores,"
            f" load average {result['machine']['loadavg_1m_at_start']:.2f} at start",
            _python_line(result["machine"]),
        ]
    )


def report(result: dict[str, Any]) -> str:
    d, s = result["direct"], result["sidecar"]
    lines = [
        f"scenario {result['scenario']}  rate {result['rate']}/s  {result['duration_s']} s per path"
        f" in {result['rounds']} alternating rounds  pinning: {result['pinning']}",
        f"idle cpus: {result.get('idle_cpus', 'halt')}",
        f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores,"
        f" load average {result['machine']['loadavg_1m_at_start']:.2f} at start",
        _python_line(result["machine"]),
        f"{'':10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}{'errors':>8}",
    ]
    rows = [("direct", d), ("sidecar", s)]
    if "bare" in result:
        rows.append(("bare", result["bare"]))
    if "nginx" in result:
        rows.append(("nginx", result["nginx"]))
    if "base" in result:
        rows.append(("base", result["base"]))
    if "sidecar+control" in result:
        rows.append(("+control", result["sidecar+control"]))
    if "sidecar+hostile" in result:
        rows.append(("+hostile", result["sidecar+hostile"]))
    for name, row in rows:
        lines.append(
            f"{name:10}{row['rps']:>10.1f}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
            f"{row['p999_ms']:>10.3f}{row['errors'] + row['non_2xx']:>8}"
        )
    lines.append(
        f"{'added':10}{'':>10}{result['added_p50_ms']:>10.3f}{result['added_p99_ms']:>10.3f}"
        f"{result['added_p999_ms']:>10.3f}"
    )
    lines.append(
        f"{'ratio':10}{result['ratio_rps'] or 0:>10.3f}{result['ratio_p50']:>10.2f}"
        f"{result['ratio_p99']:>10.2f}{result['ratio_p999']:>10.2f}"
    )
    lines.append(
        f"sidecar CPU: {result['sidecar_cpu_us_per_req']:.0f} µs per request over its rounds"
        f" (+{result['sidecar_cpu_between_rounds_us_per_req']:.0f} µs between rounds)"
    )
    if "bare_cpu_us_per_req" in result:
        lines.append(
            f"bare byte-pipe proxy CPU: {result['bare_cpu_us_per_req']:.0f} µs per request in the"
            f" same run (sockets and wake-ups alone); the sidecar's over it:"
            f" {result['sidecar_cpu_over_bare_us_per_req']:.0f} µs"
        )
    lines.append(
        "load generator, per path: "
        + "; ".join(
            f"{name} lag max {row['loadgen_lag_max_ms']:.2f} ms, backlogged {row['backlogged']},"
            f" {row['loadgen_cpu_us_per_req']:.0f} µs CPU per request"
            for name, row in rows
        )
    )
    for name, row in rows:
        if row.get("unsolicited") or row.get("reconnects"):
            lines.append(
                f"{name}: {row.get('reconnects', 0)} connections replaced, of which"
                f" {row.get('unsolicited', 0)} after an answer to no request (not counted as"
                " requests)"
            )
    if "base_cpu_us_per_req" in result:
        lines.append(
            f"base sidecar CPU (--base-sidecar): {result['base_cpu_us_per_req']:.0f} µs per request"
            f" in the same run; this code's is {result['sidecar_cpu_ratio_to_base']:.3f}x the base's"
        )
    if "nginx_cpu_us_per_req" in result:
        ratio = result["sidecar_cpu_ratio_to_nginx"]
        lines.append(
            f"nginx CPU: {result['nginx_cpu_us_per_req']:.0f} µs per request in the same run;"
            f" the sidecar's is {ratio:.2f}x nginx's"
            + (
                f" and {result['sidecar_cpu_ratio_to_bare']:.2f}x the bare proxy's"
                if result.get("sidecar_cpu_ratio_to_bare")
                else ""
            )
        )
    if "control_load" in result:
        cl = result["control_load"]
        work = ", ".join(f"{k} {v}" for k, v in cl["work_done"].items())
        lines.append(
            f"control-plane load (+control rounds, on the {cl['control_on']}'s core, console"
            f" {cl['console_offset_s']:g} s after each scrape: {work}): p99 {cl['ratio_p99_to_quiet_sidecar']:.2f}x"
            f" (95% interval over resampled rounds {cl['ratio_p99_ci95'][0]:.2f}-{cl['ratio_p99_ci95'][1]:.2f})"
            f" and p50 {cl['ratio_p50_to_quiet_sidecar']:.2f}x"
            f" ({cl['ratio_p50_ci95'][0]:.2f}-{cl['ratio_p50_ci95'][1]:.2f}) the quiet sidecar's in"
            " the same run;"
            f" the sidecar's own process (its control process left out) took"
            f" {cl['data_plane_cpu_us_per_req_working']:.0f} µs CPU per request while the control"
            f" plane worked, {cl['data_plane_cpu_us_per_req_quiet']:.0f} µs while it was quiet;"
            f" its control process {cl['control_process_cpu_ms_per_s_working']:.1f} ms of CPU a"
            f" second working, {cl['control_process_cpu_ms_per_s_quiet']:.1f} quiet"
        )
        near = cl["tail_near_calls"]
        if near["all"]["calls"]:
            a = near["all"]
            each = "; ".join(
                f"{path} {n['share_of_slow_near_calls']:.1%} against {n['share_of_all_near_calls']:.1%}"
                for path, n in near.items()
                if path != "all"
            )
            lines.append(
                f"the +control rounds' requests slower than the quiet p99"
                f" ({a['quiet_p99_ms']:.3f} ms): {a['slow']} ({a['slow_share']:.2%} of"
                f" them), {a['share_of_slow_near_calls']:.1%} in flight during a scrape or"
                f" console call or {NEAR_MARGIN_S * 1e3:g} ms after it, against"
                f" {a['share_of_all_near_calls']:.1%} of all their requests ({a['calls']} calls;"
                f" by call: {each})"
            )
            for path, n in near.items():
                ph = n["near_by_phase"]
                lines.append(
                    f"  {path}: calls {n['call_ms_p50']:.2f} ms (p50, the client's); near requests"
                    " that started before the call / during it / in the margin after:"
                    f" slow {ph['slow_before']}/{ph['slow_during']}/{ph['slow_after']},"
                    f" all {ph['all_before']}/{ph['all_during']}/{ph['all_after']}"
                )
    if "hostile_load" in result:
        hl = result["hostile_load"]
        held = hl["held"]
        lines.append(
            f"hostile clients (+hostile rounds: {held.get('slowloris_held', 0)} slowloris and"
            f" {held.get('stalled_held', 0)} stalled bodies held, {held.get('reopened', 0)} reopened"
            f" after {held.get('refused_408', 0)} 408s): added p99 {hl['added_p99_ms']:.3f} ms,"
            f" {hl['ratio_added_p99_to_quiet_sidecar']:.2f}x the quiet sidecar's added p99;"
            f" control plane /healthz answered {held.get('healthz_ok', 0)},"
            f" failed {held.get('healthz_failed', 0)}"
        )
    counted = {
        k: int(v) for k, v in result.get("sidecar_metrics", {}).items() if _COUNTED.search(k) and v
    }
    if counted:
        lines.append("sidecar counters: " + ", ".join(f"{k} {v}" for k, v in counted.items()))
    lag = max(row["loadgen_lag_max_ms"] for _, row in rows)
    load = result["machine"]["loadavg_1m_at_start"]
    if lag > _LAG_WARN_MS or load > 0.5 * (result["machine"]["cores"] or 1):
        lines.append(
            f"warning: the machine was busy (load average {load:.2f}, generator lag up to"
            f" {lag:.0f} ms): tail figures are not the sidecar's alone"
        )
    for key, limit in result.get("targets", {}).items():
        value = result[key]
        lines.append(f"target {key} <= {limit}: {value:.3f} {'PASS' if value <= limit else 'FAIL'}")
    return "\n".join(lines)


def _python_line(machine: dict[str, Any]) -> str:
    py = machine.get("sidecar_python")
    if not py:
        return f"sidecar python: {machine['python']}"
    build = py["build"].split("\n")[0]
    return f"sidecar python: {py['executable']} ({build})"


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One benchmark at a time: two pinned to the same cores would measure each other."""
    with open(path, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another benchmark holds {path}; waiting for it to finish", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scenario", choices=("fast", "model"), default="fast")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per path")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per path")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections per path"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--no-bare", action="store_true", help="leave out the bare byte-pipe proxy path"
    )
    parser.add_argument(
        "--saturate",
        action="store_true",
        help="step the rate per path until p99 passes 10 ms or the path falls behind"
        " (loadtests/saturation.py) instead of the fixed-rate rounds",
    )
    parser.add_argument(
        "--rates",
        default=",".join(map(str, saturation.DEFAULT_RATES)),
        help="--saturate: the rate ladder, comma-separated",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=5.0, help="--saturate: seconds per path per rate"
    )
    parser.add_argument(
        "--no-nginx",
        action="store_true",
        help="leave out nginx (one worker, upstream keepalive 32, access log off; apt's"
        " nginx-light is installed when missing)",
    )
    parser.add_argument(
        "--allow-halt",
        action="store_true",
        help="let idle CPUs halt during the run (default: hold them to polling, loadtests/idle.py)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra sidecar setting",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="Python that runs the sidecar and the bare proxy: a venv's, with this project"
        " installed (default: this one)",
    )
    parser.add_argument(
        "--sidecar", default=None, help="sidecar command (default: `sidecar` next to --python)"
    )
    parser.add_argument(
        "--base-sidecar",
        default=None,
        metavar="COMMAND",
        help="add a path: a second sidecar run by COMMAND (e.g. `env PYTHONPATH=/tmp/base"
        " .venv/bin/sidecar` for an export of another commit), same config, pinned alike:"
        " an A/B of two versions of the code in one run",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (config, sidecar log)"
    )
    parser.add_argument(
        "--control-load",
        type=int,
        default=0,
        metavar="ITEMS",
        help="add a path: the sidecar loaded while /metrics is scraped every second, the console"
        " is open and `sidecar audit verify` runs, over ITEMS pre-filled review items",
    )
    parser.add_argument(
        "--control-on",
        choices=("sidecar", "generator"),
        default="sidecar",
        help="with --control-load: the core the control process and `audit verify` run on: the"
        " sidecar's (a one-core pod; the default) or the load generator's (a pod with a core"
        " to spare)",
    )
    parser.add_argument(
        "--control-parts",
        default=",".join(PARTS),
        help="with --control-load: which of the control plane's work to run (comma-separated:"
        " metrics, console, verify; default all), to tell their shares apart; `none` runs the"
        " +control rounds with no work (an A=A check of the rotation); `floor` adds a"
        " `/healthz` a second, a call with no work of its own",
    )
    parser.add_argument(
        "--verify-pace",
        type=float,
        default=None,
        metavar="N",
        help="with --control-load: run `audit verify` with --max-records-per-s N (default: the"
        " command's own pace; 0: flat out, as before it was paced)",
    )
    parser.add_argument(
        "--console-offset",
        type=float,
        default=CONSOLE_OFFSET_S,
        metavar="S",
        help="with --control-load: the console's calls begin S seconds after each scrape (a"
        " Prometheus and a browser tick on their own clocks); 0 puts them in one burst with the"
        " scrape, as every run did until 2026-12-01 16:50",
    )
    parser.add_argument(
        "--slowloris",
        type=int,
        default=0,
        metavar="N",
        help="add a path: the sidecar loaded while N slowloris connections and N stalled bodies"
        " are held open against it (loadtests/slowloris.py)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON result")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.rate <= 0:
        parser.error("--rounds, --duration and --rate must be positive")
    extra = parse_set(args.set)
    unknown = set(args.control_parts.split(",")) - {*PARTS, FLOOR_PART, "none"}
    if unknown:
        parser.error(
            f"--control-parts takes {', '.join((*PARTS, FLOOR_PART))}, not {', '.join(sorted(unknown))}"
        )

    cores = os.sched_getaffinity(0)
    try:
        with _exclusive(LOCK_PATH), idle_cpus(poll=not args.allow_halt) as idle:
            return _run(args, argv, extra, idle)
    finally:
        os.sched_setaffinity(0, cores)


def _run(
    args: argparse.Namespace, argv: list[str] | None, extra: dict[str, dict[str, Any]], idle: str
) -> int:
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    near: set[int] | None = {cores[0]} if pin else None
    far: set[int] | None = {cores[1]} if pin else None
    pinning = (
        f"loadgen+upstream on cpu {cores[0]}, sidecar (and bare proxy) on cpu {cores[1]}"
        if pin
        else "none"
    )
    if near:
        os.sched_setaffinity(0, near)

    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    upstream: Any = FastUpstreamProcess(cpus=near) if args.scenario == "fast" else None
    sidecar: SidecarProcess | None = None
    bare: BareProxyProcess | None = None
    nginx: NginxProcess | None = None
    base: SidecarProcess | None = None
    try:
        if upstream is not None:
            upstream_url = upstream.start()
        else:
            upstream = start_model_server(near)
            upstream_url = upstream.url
        config = work / "sidecar.toml"
        if args.control_load:
            for section, values in prepare(work, args.control_load, _verify_chain(args)).items():
                extra.setdefault(section, {}).update(values)
        write_config(config, upstream_url, extra)
        command = shlex.split(args.sidecar) if args.sidecar else _sidecar_command(args.python)
        sidecar = SidecarProcess(command, config, work, work / "sidecar.log", far)
        urls = sidecar.start()
        print(
            f"upstream {upstream_url}, sidecar {urls['proxy']} (control {urls['control']}), work dir {work}"
        )
        paths = {"direct": upstream_url, "sidecar": urls["proxy"]}
        pids = {"sidecar": sidecar.pid}
        if args.base_sidecar:
            # Its own folder: the two sidecars' sinks and stores must not share files.
            (work / "base").mkdir()
            base = SidecarProcess(
                shlex.split(args.base_sidecar), config, work / "base", work / "base.log", far
            )
            paths["base"] = base.start()["proxy"]
            pids["base"] = base.pid
        if not args.no_bare:
            bare = BareProxyProcess(upstream_url, far, python=args.python)
            paths["bare"] = bare.start()
            pids["bare"] = bare.pid
        if not args.no_nginx:
            nginx = NginxProcess(upstream_url, far)
            paths["nginx"] = nginx.start()
            pids["nginx"] = nginx.pid
        control_load = None
        if args.control_load:
            paths["sidecar+control"] = urls["proxy"]
            pids["sidecar+control"] = sidecar.pid
            on = near if args.control_on == "generator" else far
            if args.control_on == "generator" and near:
                # The control process (the sidecar's descendants) and `audit verify` on the other
                # core, as in a pod with two cores where the kernel spreads them.
                assert pin_descendants(sidecar.pid, near) >= 1, "no control process to pin"
            control_load = ControlLoad(
                urls["control"],
                command,
                work / "review.db",
                on,
                parts=tuple(p for p in args.control_parts.split(",") if p != "none"),
                client_cpus=near,
                verify_pace=args.verify_pace,
                console_offset=args.console_offset,
            )
            control_load.open()
        hostile = None
        if args.slowloris:
            paths["sidecar+hostile"] = urls["proxy"]
            pids["sidecar+hostile"] = sidecar.pid
            hostile = HostileLoad(urls["proxy"], urls["control"], args.slowloris)
        if args.saturate:
            rates = [float(r) for r in args.rates.split(",") if r.strip()]
            reqs = {name: v2_requests(*_host_port(url)) for name, url in paths.items()}
            targets = {name: url + V2_PATH for name, url in paths.items()}
            measured = uvloop.run(
                saturation.saturate(
                    targets, reqs, pids, rates, args.step_seconds, args.connections,
                    _combine, cpu_seconds,
                )
            )  # fmt: skip
        else:
            try:
                measured = uvloop.run(_rounds(paths, args, pids, control_load, hostile))
            finally:
                if control_load is not None:
                    control_load.close()
        metrics = _metrics(urls["control"])
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if bare is not None:
            bare.stop()
        if nginx is not None:
            nginx.stop()
        if sidecar is not None:
            sidecar.stop()
        if base is not None:
            base.stop()
        if upstream is not None:
            upstream.stop()

    machine = _machine()
    machine["loadavg_1m_at_start"] = load_at_start
    machine["sidecar_python"] = _interpreter(args.python)
    result: dict[str, Any] = {
        "scenario": args.scenario,
        "rate": args.rate,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "pinning": pinning,
        "idle_cpus": idle,
        "sidecar_settings": extra,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m loadtests.bench_proxy "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": machine,
        **measured,
        "sidecar_metrics": metrics,
    }
    if args.saturate:
        print(_header(result))
        print(saturation.report(result))
    else:
        if args.scenario == "fast":
            result["targets"] = TARGETS_FAST
        print(report(result))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    kind = "saturation" if args.saturate else args.scenario
    path = args.out / f"proxy-{kind}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"result: {path.relative_to(_REPO) if path.is_relative_to(_REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
