"""What one gRPC pass-through hop costs, by API: bare proxies side by side in one run.

    python -m loadtests.grpc_hops --rate 500 --duration 30 --rounds 6

Starts a fixed-answer gRPC server (one ModelInfer answer, the bytes precomputed, on
grpcio's asyncio server) and, each in a process of its own, one bare pass-through
proxy per candidate API in front of it: a generic handler that forwards the client's
bytes, metadata (the sidecar's `end_to_end` filter) and deadline, and brings back the
answer's bytes, initial and trailing metadata. No decision, no parsing: what is left
is what the API charges for a hop. Then it sends the same open-loop load as
loadtests/bench_grpc.py (single-row FP32 ModelInfer, latency from each call's
scheduled time) direct and through every proxy, rotating the order each round, and
reports p50/p99, what each proxy adds over direct, and each proxy's CPU time per call
(utime + stime from /proc over its own rounds). The fixed-answer server's CPU per
direct call is the floor for one grpcio server side.

The candidates (`--only` picks some):
  aio          grpcio's asyncio server and channel on uvloop (the sidecar's API)
  aio-asyncio  the same on the standard asyncio loop
  aio-tuned    `aio` with channelz off and a local subchannel pool
  sync         grpcio's sync server (C-core completion queue, a thread pool) and sync channel
  sync-1       `sync` with one worker thread: no GIL hand-over between workers
  aio-lazy     `aio` sending initial metadata only when there is some (one batch less)
  aio-noee     `aio` with grpcio's EventEngine rollouts off (GRPC_EXPERIMENTS as
               sidecar/dataplane/grpc/__init__.py sets it)
  sync-noee    `sync` with them off
  grpclib      grpclib's server and channel (pure-Python HTTP/2 over h2, asyncio/uvloop;
               `pip install grpclib`, left out when it does not import)
  go           grpc-go's server and client (loadtests/grpc_go_hop/, built with `go build`
               on first use; left out without a Go toolchain): what a compiled hop costs
  tap          the sidecar's HTTP/2 frame tap (sidecar/dataplane/grpc/tap.py) alone, without
               decisions: frames forwarded, header blocks decoded and re-encoded
  sidecar      `sidecar serve` itself, on the data plane's loop beside the HTTP listener:
               the call goes through its pass-through path (no decision)
Every path calls ModelStatistics with the ModelInfer request's bytes: a method the
sidecar forwards without reading (as bench_grpc's `passthrough`), which the
fixed-answer server answers with the ModelInfer answer.
`--serve KIND --port P --upstream U` runs one proxy alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop

from loadtests.bench_grpc import PASSTHROUGH, SERVER_READY, _payload, _summary, run_load
from loadtests.bench_proxy import LOCK_PATH, RESULTS_DIR, _exclusive, write_config
from loadtests.grpc_go import GO_BINARY, build_go
from loadtests.procs import FastUpstreamProcess, SidecarProcess, cpu_seconds
from sidecar.dataplane.grpc import NO_EVENT_ENGINE
from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import ModelInferResponse, ServerReadyResponse

# Candidate name: (proxy API, environment it runs with).
KINDS: dict[str, tuple[str, dict[str, str]]] = {
    "aio": ("aio", {}),
    "aio-asyncio": ("aio-asyncio", {}),
    "aio-tuned": ("aio-tuned", {}),
    "aio-lazy": ("aio-lazy", {}),
    "aio-noee": ("aio", {"GRPC_EXPERIMENTS": NO_EVENT_ENGINE}),
    "aio-lazy-noee": ("aio-lazy", {"GRPC_EXPERIMENTS": NO_EVENT_ENGINE}),
    "sync": ("sync", {}),
    "sync-1": ("sync-1", {}),
    "sync-noee": ("sync", {"GRPC_EXPERIMENTS": NO_EVENT_ENGINE}),
    "grpclib": ("grpclib", {}),
    "tap": ("tap", {}),
    # `sidecar serve` itself (its own defaults), the call forwarded by its pass-through path.
    "sidecar": ("sidecar", {}),
    # A compiled hop for comparison: grpc-go (loadtests/grpc_go_hop/), built with `go`.
    "go": ("go", {}),
}
APIS = ("aio", "aio-asyncio", "aio-tuned", "aio-lazy", "sync", "sync-1", "grpclib", "tap")
_REPO = Path(__file__).resolve().parent.parent
_TIMEOUT_S = 30.0
_NO_DEADLINE_S = 1e8
Context = Any


# Metadata a grpcio proxy never copies from one hop to the next: gRPC's own keys, HTTP/2's
# connection headers and what the channel sets itself (what the sidecar's grpcio
# listener filtered, before the frame tap replaced it).
_HOP = frozenset(
    {"te", "content-type", "user-agent", "host", "connection", "keep-alive", "transfer-encoding"}
)


def end_to_end(metadata: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in metadata or () if k not in _HOP and not k.startswith(("grpc-", ":"))]


def _answer() -> bytes:
    out = ModelInferResponse(model_name="demo", id="bench")
    out.outputs.add(name="label", datatype="INT64", shape=[1])
    out.raw_output_contents.append((1).to_bytes(8, "little"))
    out.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    out.raw_output_contents.append(np.asarray([0.25, 0.75], dtype="<f4").tobytes())
    data: bytes = out.SerializeToString()
    return data


# The fixed-answer server ------------------------------------------------------------


async def serve_upstream(port: int) -> None:
    answer = _answer()
    ready: bytes = ServerReadyResponse(ready=True).SerializeToString()

    async def infer(request: bytes, context: Context) -> bytes:
        return answer

    async def server_ready(request: bytes, context: Context) -> bytes:
        return ready

    handlers = {
        PASSTHROUGH: grpc.unary_unary_rpc_method_handler(infer),
        SERVER_READY: grpc.unary_unary_rpc_method_handler(server_ready),
    }

    class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            return handlers.get(details.method)

    server = grpc.aio.server(handlers=[Handler()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# The candidate proxies --------------------------------------------------------------


def _deadline(context: Context) -> float:
    left: float | None = context.time_remaining()
    if left is None or left > _NO_DEADLINE_S:
        return _TIMEOUT_S
    return min(left, _TIMEOUT_S)


async def serve_aio(port: int, upstream: str, tuned: bool, lazy: bool = False) -> None:
    options: list[tuple[str, Any]] = [("grpc.enable_retries", 0)]
    if tuned:
        options += [("grpc.enable_channelz", 0), ("grpc.use_local_subchannel_pool", 1)]
    channel = grpc.aio.insecure_channel(upstream, options=options)
    stubs: dict[str, Any] = {}

    async def forward(method: str, request: bytes, context: Context) -> bytes:
        stub = stubs.get(method)
        if stub is None:
            stub = stubs[method] = channel.unary_unary(method)
        call = stub(
            request, metadata=end_to_end(context.invocation_metadata()), timeout=_deadline(context)
        )
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")
            raise
        initial = end_to_end(await call.initial_metadata())
        if initial or not lazy:
            # Sent on its own, this is one more batch (a completion and its thread hops);
            # left unsent, grpcio sends the (empty) headers with the answer.
            await context.send_initial_metadata(initial)
        context.set_trailing_metadata(end_to_end(await call.trailing_metadata()))
        return response

    class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            method: str = details.method

            async def handle(request: bytes, context: Context) -> bytes:
                return await forward(method, request, context)

            return grpc.unary_unary_rpc_method_handler(handle)

    server_options = [("grpc.enable_channelz", 0)] if tuned else []
    server = grpc.aio.server(handlers=[Handler()], options=server_options)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_sync(port: int, upstream: str, workers: int) -> None:
    channel = grpc.insecure_channel(upstream, options=[("grpc.enable_retries", 0)])
    stubs: dict[str, Any] = {}

    def forward(method: str, request: bytes, context: Context) -> bytes:
        stub = stubs.get(method)
        if stub is None:
            stub = stubs[method] = channel.unary_unary(method)
        try:
            response, call = stub.with_call(
                request,
                metadata=end_to_end(context.invocation_metadata()),
                timeout=_deadline(context),
            )
        except grpc.RpcError as err:
            context.abort(err.code(), err.details() or "")
        context.send_initial_metadata(end_to_end(call.initial_metadata()))
        context.set_trailing_metadata(end_to_end(call.trailing_metadata()))
        return response  # type: ignore[no-any-return]

    class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            method: str = details.method
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: forward(method, request, context)
            )

    server = grpc.server(ThreadPoolExecutor(max_workers=workers), handlers=[Handler()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve_grpclib(port: int, upstream: str) -> None:
    from grpclib.client import Channel
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server, Stream

    class Raw(CodecBase):  # type: ignore[misc]  # (Any to mypy where grpclib is not installed)
        """Messages stay bytes either way."""

        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return message  # type: ignore[no-any-return]

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    host, _, up_port = upstream.rpartition(":")
    channel = Channel(host, int(up_port), codec=Raw())

    def handler_for(method: str) -> Handler:
        async def handle(stream: Stream[bytes, bytes]) -> None:
            request = await stream.recv_message()
            assert request is not None
            left = stream.deadline.time_remaining() if stream.deadline else _TIMEOUT_S
            metadata = end_to_end(list(stream.metadata.items()) if stream.metadata else [])
            async with channel.request(
                method,
                Cardinality.UNARY_UNARY,
                bytes,
                bytes,
                timeout=min(left, _TIMEOUT_S),
                metadata=metadata,
            ) as up:
                await up.send_message(request, end=True)
                await up.recv_initial_metadata()
                await stream.send_initial_metadata(
                    metadata=end_to_end(list((up.initial_metadata or {}).items()))
                )
                reply = await up.recv_message()
                assert reply is not None
                await up.recv_trailing_metadata()
                await stream.send_message(reply)
                await stream.send_trailing_metadata(
                    metadata=end_to_end(list((up.trailing_metadata or {}).items()))
                )

        return Handler(handle, Cardinality.UNARY_UNARY, bytes, bytes)

    class Service:
        def __mapping__(self) -> dict[str, Handler]:
            return {PASSTHROUGH: handler_for(PASSTHROUGH)}

    server = Server([Service()], codec=Raw())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


async def serve_tap(port: int, upstream: str) -> None:
    from sidecar.dataplane.grpc.infer import UNARY_METHODS
    from sidecar.dataplane.grpc.tap import Hooks, TapConnection, tap_config

    config = tap_config(
        f"http://{upstream}",
        None,
        Hooks(),
        timeout_s=_TIMEOUT_S,
        max_message=8 << 20,
        max_concurrent=1024,
        max_header_bytes=60 * 1024,
        unary=UNARY_METHODS,
        strip=frozenset({b"x-group-attributes"}),
    )
    conns: set[TapConnection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TapConnection(config, conns), "127.0.0.1", port)
    await server.serve_forever()


def serve(kind: str, port: int, upstream: str) -> None:
    if kind == "aio":
        uvloop.run(serve_aio(port, upstream, tuned=False))
    elif kind == "aio-asyncio":
        asyncio.run(serve_aio(port, upstream, tuned=False))
    elif kind == "aio-lazy":
        uvloop.run(serve_aio(port, upstream, tuned=False, lazy=True))
    elif kind == "aio-tuned":
        uvloop.run(serve_aio(port, upstream, tuned=True))
    elif kind == "sync":
        serve_sync(port, upstream, workers=8)
    elif kind == "sync-1":
        serve_sync(port, upstream, workers=1)
    elif kind == "grpclib":
        uvloop.run(serve_grpclib(port, upstream))
    elif kind == "tap":
        uvloop.run(serve_tap(port, upstream))
    else:
        raise SystemExit(f"unknown kind {kind!r}")


# The harness ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _child(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    # Set either way (empty: grpcio's defaults), whatever a package sets when unset.
    environ["GRPC_EXPERIMENTS"] = ""
    return subprocess.Popen(
        [sys.executable, "-m", "loadtests.grpc_hops", *args], cwd=_REPO, env=environ | (env or {})
    )


def _start_sidecar(port: int, upstream: str, stack: contextlib.ExitStack) -> SidecarProcess:
    """`sidecar serve` with its gRPC listener on `port` in front of `upstream`; stopped by `stack`."""
    work = Path(tempfile.mkdtemp(prefix="grpc-hops-"))
    # Nothing calls the HTTP side; /readyz asks it an HTTP/1.1 question, so one stands there.
    http_upstream = FastUpstreamProcess()
    stack.callback(http_upstream.stop)
    write_config(
        work / "sidecar.toml",
        http_upstream.start(),
        {
            "proxy": {"grpc_listen": f"127.0.0.1:{port}", "grpc_upstream": f"http://{upstream}"},
            "sink": {"directory": str(work / "events")},
            "review": {"db_path": str(work / "review.db")},
        },
    )
    sidecar = SidecarProcess(
        [sys.executable, "-m", "sidecar.cli"], work / "sidecar.toml", _REPO, work / "log", None
    )
    saved = os.environ.pop("GRPC_EXPERIMENTS", None)
    try:
        sidecar.start()
    finally:
        if saved is not None:
            os.environ["GRPC_EXPERIMENTS"] = saved
    stack.callback(sidecar.stop)
    return sidecar


def _kinds(only: str | None) -> list[str]:
    kinds = list(KINDS) if not only else [k.strip() for k in only.split(",")]
    for k in kinds:
        if k not in KINDS:
            raise SystemExit(f"--only: unknown kind {k!r} (one of {', '.join(KINDS)})")
    if "go" in kinds and not build_go():
        kinds.remove("go")
    if "grpclib" in kinds:
        try:
            import grpclib  # noqa: F401
        except ImportError:
            print("grpclib does not import (pip install grpclib): left out")
            kinds.remove("grpclib")
    return kinds


def _report(result: dict[str, Any]) -> str:
    d = result["paths"]["direct"]
    lines = [
        f"gRPC pass-through hop by API: ModelInfer, open loop {result['rate']:g} calls/s, "
        f"{result['rounds']} rounds x {result['round_s']:g} s per path, {result['date']}, "
        f"load average {result['load_average'][0]:.1f}",
        "CPU/call: the process the load calls (direct*: the fixed-answer server; else the proxy)",
        "path           calls/s   p50 ms   p99 ms  added p50  added p99  CPU/call  x aio  errors",
    ]
    aio = result["paths"].get("aio", {}).get("cpu_us_per_call")
    for name, r in result["paths"].items():
        cpu = r["cpu_us_per_call"]
        ratio = f"{cpu / aio:5.2f}" if aio and not name.startswith("direct") else "    -"
        lines.append(
            f"{name:<13} {r['calls_per_s']:7.1f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
            f"{r['p50_ms'] - d['p50_ms']:10.3f} {r['p99_ms'] - d['p99_ms']:10.3f} "
            f"{cpu:6.0f} us  {ratio}  {r['errors'] or '-'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.grpc_hops", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per path")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--only", help=f"comma-separated kinds (of {', '.join(KINDS)})")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON result")
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help="do not wait for other benchmarks (a smoke run, whose figures mean nothing)",
    )
    parser.add_argument("--serve", choices=APIS, help="run one proxy alone")
    parser.add_argument("--serve-upstream", action="store_true", help="run the server alone")
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream", help="host:port the proxy forwards to")
    args = parser.parse_args(argv)
    if args.serve_upstream:
        uvloop.run(serve_upstream(args.port))
        return 0
    if args.serve:
        serve(args.serve, args.port, args.upstream)
        return 0

    kinds = _kinds(args.only)
    children: list[subprocess.Popen[bytes]] = []
    with (
        contextlib.nullcontext() if args.no_lock else _exclusive(LOCK_PATH),
        contextlib.ExitStack() as stack,
    ):
        try:
            # Each path: the address the load calls, and the process its CPU is charged to.
            targets: dict[str, tuple[str, int]] = {}
            # The fixed-answer server as every proxy's upstream, and (direct-noee) a second
            # one with the EventEngine rollouts off: one grpcio server side by itself.
            for name, env in (
                ("direct", {}),
                ("direct-noee", {"GRPC_EXPERIMENTS": NO_EVENT_ENGINE}),
            ):
                port = _free_port()
                proc = _child(["--serve-upstream", "--port", str(port)], env)
                children.append(proc)
                _wait_port(port)
                targets[name] = (f"127.0.0.1:{port}", proc.pid)
            upstream = targets["direct"][0]
            for kind in kinds:
                port = _free_port()
                api, env = KINDS[kind]
                if api == "sidecar":
                    sidecar = _start_sidecar(port, upstream, stack)
                    targets[kind] = (f"127.0.0.1:{port}", sidecar.pid)
                    continue
                if api == "go":
                    go = subprocess.Popen(
                        [str(GO_BINARY), "-listen", f"127.0.0.1:{port}", "-upstream", upstream]
                    )
                    children.append(go)
                    _wait_port(port)
                    targets[kind] = (f"127.0.0.1:{port}", go.pid)
                    continue
                proc = _child(["--serve", api, "--port", str(port), "--upstream", upstream], env)
                children.append(proc)
                _wait_port(port)
                targets[kind] = (f"127.0.0.1:{port}", proc.pid)
            payload = _payload()
            for target, _pid in targets.values():
                uvloop.run(run_load(target, payload, args.rate, args.warmup, PASSTHROUGH))
            per_round = args.duration / args.rounds
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            cpu = dict.fromkeys(targets, 0.0)
            names = list(targets)
            for i in range(args.rounds):
                # Rotated and reversed each round, so drift on the machine hits every path alike.
                order = names[i % len(names) :] + names[: i % len(names)]
                if i % 2:
                    order.reverse()
                for name in order:
                    target, pid = targets[name]
                    c0 = cpu_seconds(pid)
                    rounds[name].append(
                        uvloop.run(run_load(target, payload, args.rate, per_round, PASSTHROUGH))
                    )
                    cpu[name] += cpu_seconds(pid) - c0
            paths: dict[str, dict[str, Any]] = {}
            for name in names:
                summary = _summary(rounds[name])
                summary["cpu_us_per_call"] = 1e6 * cpu[name] / max(summary["calls"], 1)
                paths[name] = summary
            result = {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "rate": args.rate,
                "rounds": args.rounds,
                "round_s": per_round,
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "paths": paths,
            }
            print(_report(result))
            args.out.mkdir(parents=True, exist_ok=True)
            out = args.out / f"grpc-hops-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
            out.write_text(json.dumps(result, indent=1))
            print(f"result: {out}")
        finally:
            for proc in children:
                proc.terminate()
            for proc in children:
                proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
