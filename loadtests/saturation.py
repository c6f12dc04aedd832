"""Saturation mode of the proxy benchmark: the highest rate each path sustains.

    python -m loadtests.bench_proxy --scenario fast --saturate [--rates 1000,2000,...]

For each rate of a rising ladder, every path still standing is loaded open loop for
`--step-seconds`; a path stops at the first rate where its p99 passes 10 ms, it falls
behind the timetable (achieved rate below 95% of the offered one) or a request fails. A
path's limit counts as the generator's (or the upstream's), not the proxy's, when the
direct path failed at that same rate or below: the report says so. CPU per request is
given at every step, so near-saturation costs can be compared across paths in one run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loadtests.loadgen import LoadResult, run_load

P99_LIMIT_MS = 10.0
KEEP_UP = 0.95
DEFAULT_RATES = (1000, 2000, 3500, 5000, 7500, 10_000, 12_500, 15_000, 20_000)

Combine = Callable[[list[LoadResult]], dict[str, Any]]
CpuOf = Callable[[int], float]


async def saturate(
    targets: dict[str, str],
    reqs: Mapping[str, Sequence[bytes]],
    pids: dict[str, int],
    rates: Sequence[float],
    step_s: float,
    connections: int,
    combine: Combine,
    cpu_of: CpuOf,
) -> dict[str, Any]:
    names = list(targets)
    for name in names:  # warm every path at the first rate
        await run_load(targets[name], reqs[name], rates[0], 1.0, connections)
    paths: dict[str, dict[str, Any]] = {n: {"steps": [], "max_rate": None} for n in names}
    standing = list(names)
    for rate in rates:
        for name in list(standing):
            pid = pids.get(name)
            before = cpu_of(pid) if pid is not None else 0.0
            res = await run_load(targets[name], reqs[name], rate, step_s, connections)
            c = combine([res])
            cpu = cpu_of(pid) - before if pid is not None else None
            ok = (
                c["p99_ms"] <= P99_LIMIT_MS
                and c["rps"] >= KEEP_UP * rate
                and c["errors"] == 0
                and c["non_2xx"] == 0
            )
            paths[name]["steps"].append(
                {
                    "rate": rate,
                    "rps": c["rps"],
                    "p50_ms": c["p50_ms"],
                    "p99_ms": c["p99_ms"],
                    "errors": c["errors"] + c["non_2xx"],
                    "reconnects": c["reconnects"],
                    "backlogged": c["backlogged"],
                    "cpu_us_per_req": 1e6 * cpu / max(c["requests"], 1)
                    if cpu is not None
                    else None,
                    "loadgen_cpu_us_per_req": c["loadgen_cpu_us_per_req"],
                    "ok": ok,
                }
            )
            if ok:
                paths[name]["max_rate"] = rate
            else:
                paths[name]["stopped_at"] = rate
                standing.remove(name)
        if not standing:
            break
    direct_stop = paths.get("direct", {}).get("stopped_at")
    for name, p in paths.items():
        stop = p.get("stopped_at")
        if stop is None:
            p["limit"] = "not reached (the ladder ended)"
        elif name != "direct" and direct_stop is not None and direct_stop <= stop:
            p["limit"] = "generator or upstream (the direct path failed at this rate or below)"
        else:
            p["limit"] = "this path"
    return {"mode": "saturation", "rates": list(rates), "step_s": step_s, "paths": paths}


def report(result: dict[str, Any]) -> str:
    lines = [
        f"saturation: p99 <= {P99_LIMIT_MS} ms and >= {KEEP_UP:.0%} of the offered rate,"
        f" {result['step_s']} s per step",
        f"{'path':10}{'max req/s':>11}{'p99 ms':>9}{'CPU µs/req':>12}  limit",
    ]
    for name, p in result["paths"].items():
        best = [s for s in p["steps"] if s["ok"]]
        last = best[-1] if best else None
        cpu = last["cpu_us_per_req"] if last and last["cpu_us_per_req"] is not None else None
        lines.append(
            f"{name:10}{p['max_rate'] or 0:>11.0f}"
            f"{last['p99_ms'] if last else float('nan'):>9.2f}"
            f"{cpu if cpu is not None else float('nan'):>12.1f}  {p['limit']}"
        )
    common = _highest_common_rate(result["paths"], ("sidecar", "nginx"))
    if common is not None:
        rate, side, ngx = common
        lines.append(
            f"at {rate:.0f} req/s (the highest both sustained) the sidecar used {side:.1f} µs"
            f" CPU per request, nginx {ngx:.1f}: {side / ngx:.2f}x"
        )
    return "\n".join(lines)


def _highest_common_rate(
    paths: dict[str, dict[str, Any]], pair: tuple[str, str]
) -> tuple[float, float, float] | None:
    a, b = (paths.get(n) for n in pair)
    if a is None or b is None:
        return None
    cpu_a = {s["rate"]: s["cpu_us_per_req"] for s in a["steps"] if s["ok"]}
    cpu_b = {s["rate"]: s["cpu_us_per_req"] for s in b["steps"] if s["ok"]}
    both = [r for r in cpu_a if r in cpu_b and cpu_a[r] and cpu_b[r]]
    if not both:
        return None
    r = max(both)
    return r, cpu_a[r], cpu_b[r]
