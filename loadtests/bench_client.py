"""Upstream HTTP clients compared: CPU per forwarded call, in one run.

    python -m loadtests.bench_client [--requests 5000] [--rounds 3]

Starts the fast fixed-response upstream in its own process, then, in this
process on one event loop (uvloop), sends the same V2 call sequentially over
one pooled keep-alive connection with each client, in alternating rounds, and
prints the CPU time (this process only, user + system) per call. This is the
measurement behind the data plane's choice of client (README, "Why our own
upstream client").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import uvloop

from loadtests.payloads import V2_PATH, v2_bodies
from loadtests.procs import FastUpstreamProcess
from sidecar.config import ProxySettings
from sidecar.dataplane.upstream import Upstream

Call = Callable[[], Awaitable[bytes]]


async def _clients(url: str, body: bytes) -> dict[str, tuple[Call, Callable[[], Awaitable[None]]]]:
    headers = {"content-type": "application/json"}
    hx = httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_keepalive_connections=8))
    ah = aiohttp.ClientSession(base_url=url)
    ours = Upstream(ProxySettings(upstream=url))
    await ours.start()
    raw = [(b"host", b"bench"), (b"content-type", b"application/json")]

    async def httpx_call() -> bytes:
        r = await hx.post(V2_PATH, content=body, headers=headers)
        return r.content

    async def aiohttp_call() -> bytes:
        async with ah.post(V2_PATH, data=body, headers=headers) as r:
            return await r.read()

    async def ours_call() -> bytes:
        answer = await ours.buffered(
            "POST", V2_PATH.encode(), raw, "127.0.0.1", "http", frozenset(), body
        )
        return answer.body

    return {
        "httpx.AsyncClient": (httpx_call, hx.aclose),
        "aiohttp.ClientSession": (aiohttp_call, ah.close),
        "sidecar.dataplane.client.Pool": (ours_call, ours.close),
    }


async def _run(url: str, requests: int, rounds: int) -> dict[str, list[float]]:
    body = v2_bodies(1)[0]
    clients = await _clients(url, body)
    results: dict[str, list[float]] = {name: [] for name in clients}
    for call, _ in clients.values():  # warm up each path
        for _ in range(300):
            await call()
    for r in range(rounds):
        order = list(clients.items())
        if r % 2:
            order.reverse()
        for name, (call, _) in order:
            t0 = time.process_time()
            for _ in range(requests):
                await call()
            results[name].append((time.process_time() - t0) / requests * 1e6)
    for _, close in clients.values():
        await close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_client", description=__doc__)
    p.add_argument("--requests", type=int, default=5000, help="calls per client per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    upstream = FastUpstreamProcess()
    url = upstream.start()
    try:
        results = uvloop.run(_run(url, args.requests, args.rounds))
    finally:
        upstream.stop()
    base = statistics.median(results["sidecar.dataplane.client.Pool"])
    print(f"{'client':24} {'CPU µs/call (median of rounds)':>32} {'vs ours':>8}")
    for name, per_round in results.items():
        med = statistics.median(per_round)
        print(f"{name:24} {med:32.1f} {med / base:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
