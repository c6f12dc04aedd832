"""An open-loop, fixed-rate HTTP/1.1 load generator on uvloop and httptools.

Requests leave on a fixed timetable (request i at t0 + i/rate), whatever the server does,
over a pool of pre-opened keep-alive connections. When every connection is busy the
request waits in a backlog and its latency counts from its *scheduled* time, so a stalled
server is charged for the requests it held back (no coordinated omission). When a
connection is free, latency counts from the actual write: the event loop's timers have
millisecond granularity, and that jitter is the generator's, not the server's. How late
the generator itself was (`lag`) is reported so a run can show it was not the bottleneck.

A server that ends a keep-alive connection (`Connection: close`, as nginx does after
`keepalive_requests` requests, or a close between requests) gets a new one in its place, as
any client opens one: the pool keeps its size, and `reconnects` counts them. Only a request
that was in flight when its connection went counts as an error.

    python -m loadtests.loadgen --url http://127.0.0.1:9100/v2/models/credit/infer --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import numpy as np
import uvloop

_perf = time.perf_counter


def build_request(
    host: str, port: int, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Raw bytes of one keep-alive POST with a JSON body."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    """What one run measured; latencies in seconds."""

    rate: float
    duration_s: float
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    """When each answered request was sent (or scheduled, if backlogged), seconds into the run."""
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    reconnects: int = 0
    unanswered: int = 0
    unsolicited: int = 0
    """Answers that came on a connection with no request out (a server's 408 on a connection
    it found idle): counted here, never as a request's latency; the connection is replaced."""
    backlogged: int = 0
    lags: list[float] = field(default_factory=list)
    t0: float = 0.0
    """`time.perf_counter()` when the timetable began: `starts` are relative to it (the
    clock is the machine's monotonic one, so other processes' times compare with it)."""
    elapsed_s: float = 0.0
    cpu_s: float = 0.0

    def slowest(self, k: int = 5) -> list[dict[str, float]]:
        """The `k` slowest requests: when they left (s into the run) and how long they took."""
        lat = np.asarray(self.latencies)
        idx = np.argsort(lat)[::-1][:k]
        return [{"at_s": round(self.starts[i], 3), "ms": round(lat[i] * 1000.0, 3)} for i in idx]

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1000.0
        lags = np.asarray(self.lags) * 1000.0 if self.lags else np.zeros(1)
        pct = (
            dict(
                zip(
                    ("p50_ms", "p90_ms", "p99_ms", "p999_ms"),
                    np.percentile(lat, [50, 90, 99, 99.9]),
                    strict=False,
                )
            )
            if lat.size
            else {}
        )
        return {
            "target_rps": self.rate,
            "achieved_rps": len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0,
            "sent": self.sent,
            "completed": len(self.latencies),
            "ok": sum(n for s, n in self.statuses.items() if 200 <= s < 300),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "reconnects": self.reconnects,
            "unanswered": self.unanswered,
            "unsolicited": self.unsolicited,
            "backlogged": self.backlogged,
            **{k: float(v) for k, v in pct.items()},
            "mean_ms": float(lat.mean()) if lat.size else None,
            "max_ms": float(lat.max()) if lat.size else None,
            "lag_p99_ms": float(np.percentile(lags, 99)),
            "lag_max_ms": float(lags.max()),
            "loadgen_cpu_us_per_req": 1e6 * self.cpu_s / max(self.sent, 1),
        }


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, gen: _Generator) -> None:
        self._gen = gen
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.retired = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )

    def send(self, data: bytes, started: float) -> None:
        self.started = started
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._gen.failed(self)
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        keep = self._parser.should_keep_alive()
        self._gen.completed(
            self, self._parser.get_status_code(), self.started, _perf() - self.started, keep
        )
        if not keep and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._gen.failed(self)
        if not self.lost.done():
            self.lost.set_result(None)


class _Generator:
    def __init__(self, requests: Sequence[bytes], result: LoadResult) -> None:
        self.requests = requests
        self.result = result
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.backlog: deque[float] = deque()
        self.next_request = 0
        self.all_done: asyncio.Event = asyncio.Event()
        self.expected = 0
        self.t0 = 0.0
        self.conns: list[_Connection] = []
        self.closing = False
        self.connect: Any = None  # () -> awaitable (transport, _Connection)
        self._replacing: set[asyncio.Task[None]] = set()

    def dispatch(self, scheduled: float, now: float) -> None:
        self.result.sent += 1
        if self.idle:
            self.result.lags.append(now - scheduled)
            self._write(self.idle.pop(), now)
        else:
            self.result.backlogged += 1
            self.backlog.append(scheduled)

    def _write(self, conn: _Connection, started: float) -> None:
        data = self.requests[self.next_request % len(self.requests)]
        self.next_request += 1
        self.busy.add(conn)
        conn.send(data, started)

    def completed(
        self, conn: _Connection, status: int, started: float, latency: float, keep: bool = True
    ) -> None:
        if conn not in self.busy:
            # No request of ours was out on it: not an answer to one. Counted apart, and the
            # connection given up as a failed one is (not busy: no error counted) and closed.
            self.result.unsolicited += 1
            self.failed(conn)
            if conn.transport is not None:
                conn.transport.close()
            return
        self.result.latencies.append(latency)
        self.result.starts.append(started - self.t0)
        self.result.statuses[status] += 1
        self.busy.discard(conn)
        if not keep:
            self._retire(conn)
        elif self.backlog:
            self._write(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)
        self._check_done()

    def failed(self, conn: _Connection) -> None:
        if conn in self.busy:
            self.busy.discard(conn)
            self.result.errors += 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._retire(conn)
        self._check_done()

    def _retire(self, conn: _Connection) -> None:
        """`conn` carries no more requests: open one in its place while the run lasts."""
        if conn.retired:
            return
        conn.retired = True
        if self.closing or self.connect is None:
            return
        self.result.reconnects += 1
        task = asyncio.get_running_loop().create_task(self._replace())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self) -> None:
        try:
            _, conn = await self.connect()
        except OSError:
            return  # the server is gone: the requests left wait in the backlog, unanswered
        self.conns.append(conn)
        if self.closing:
            return
        if self.backlog:
            self._write(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)

    def _check_done(self) -> None:
        answered = len(self.result.latencies) + self.result.errors
        if self.expected and answered >= self.expected:
            self.all_done.set()


async def run_load(
    url: str,
    requests: Sequence[bytes],
    rate: float,
    duration_s: float,
    connections: int = 32,
    drain_timeout_s: float = 10.0,
) -> LoadResult:
    """Send `rate * duration_s` requests (cycling through `requests`) on a fixed timetable."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if not requests:
        raise ValueError("need at least one request")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    result = LoadResult(rate=rate, duration_s=duration_s)
    gen = _Generator(requests, result)
    gen.connect = lambda: loop.create_connection(lambda: _Connection(gen), host, port)
    conns = gen.conns
    for _ in range(connections):
        _, conn = await gen.connect()
        conns.append(conn)
    gen.idle = list(reversed(conns))

    total = int(rate * duration_s)
    gen.expected = total
    interval = 1.0 / rate
    # The generator's own full collections (its heap holds the bench's imports: the
    # sidecar's modules, numpy) paused it for up to 100 ms inside a round, charged to
    # whichever path it was loading (bench_proxy --control-load, 2026-11-30: the quiet
    # path's p99.9 10-27 ms, generator lag 101 ms). Collected now, before the timetable
    # starts, and held off until the round is over.
    gc.collect()
    gc.disable()
    try:
        cpu0 = time.process_time()
        t0 = gen.t0 = result.t0 = _perf() + 0.005
        i = 0
        while i < total:
            now = _perf()
            while i < total and t0 + i * interval <= now:
                gen.dispatch(t0 + i * interval, now)
                i += 1
            if i < total:
                # uvloop's timers count whole milliseconds and fire at once below one: round
                # the wait up so the generator sleeps instead of spinning on a core it shares.
                await asyncio.sleep(math.ceil((t0 + i * interval - _perf()) * 1000.0) / 1000.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gen.all_done.wait(), drain_timeout_s)
        result.elapsed_s = _perf() - t0
        result.cpu_s = time.process_time() - cpu0
    finally:
        gc.enable()
    result.unanswered = total - len(result.latencies) - result.errors
    gen.closing = True
    for task in list(gen._replacing):
        with contextlib.suppress(Exception):
            await task
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.gather(*(c.lost for c in conns))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.loadgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", required=True, help="http://host:port/path to POST to")
    parser.add_argument("--body", default=None, help="JSON body (default: one demo V2 row)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    from loadtests.payloads import v2_bodies

    parts = urlsplit(args.url)
    bodies = [args.body.encode()] if args.body else v2_bodies(64)
    reqs = [
        build_request(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/", b)
        for b in bodies
    ]
    result = uvloop.run(run_load(args.url, reqs, args.rate, args.duration, args.connections))
    print(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
