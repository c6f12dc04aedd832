"""The gRPC benchmark: ModelInfer direct and through the sidecar, alternating, in one run.

    python -m loadtests.bench_grpc --rate 500 --duration 30

Starts a gRPC model server (the demo onnxruntime model behind grpcio's asyncio
server, answering ModelInfer with raw contents as Triton does; `--serve-model PORT`
runs it alone) and `sidecar serve` with `proxy.grpc_listen` in front of it, warms
the paths, then runs `--rounds` rounds of `duration / rounds` seconds per path,
rotating the order each round as loadtests/bench_proxy.py does. The load is open
loop: call i is started at t0 + i/rate whatever the server does, and its latency
counts from that scheduled time, so a stall is charged for the calls it held back.
One single-row FP32 call in `raw_input_contents` (what tritonclient sends), with
a request id and group attributes in the metadata, so every call through the
sidecar is a recorded decision. Prints calls/s and p50/p99/p99.9 per path, what
the sidecar adds, and its CPU time per call (utime + stime from /proc over its
rounds). Writes the result as JSON to loadtests/results/.

A third path, `passthrough`, is the same-run baseline for what grpcio charges for the
hop: the same message through the same sidecar under a method it forwards without
reading (`ModelStatistics`, one of the protocol's unary methods, which this model
server answers as it answers ModelInfer), so no decision is made (`--no-passthrough`
leaves it out).

`--ab-grpcio-defaults` adds a second sidecar to the rotation, the same code and config
started with `GRPC_EXPERIMENTS=""` (grpcio's own defaults: its EventEngine rollouts on,
which sidecar/dataplane/grpc/ turns off), as the path `sidecar-grpcio-defaults`: the
same-run A/B for that setting, CPU per call of each.
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
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop

from loadtests.bench_proxy import LOCK_PATH, RESULTS_DIR, _exclusive, write_config
from loadtests.procs import FastUpstreamProcess, SidecarProcess, cpu_seconds
from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import (
    ModelInferRequest,
    ModelInferResponse,
    ServerReadyResponse,
)
from sidecar.demo.model import META_PATH, MODEL_PATH, OnnxClassifier, load_meta

INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVER_READY = "/inference.GRPCInferenceService/ServerReady"
# Forwarded unary and unread by the sidecar; answered like ModelInfer here (the baseline path).
PASSTHROUGH = "/inference.GRPCInferenceService/ModelStatistics"
TARGETS = {"added_p50_ms": 0.3, "added_p99_ms": 1.0}
_REPO = Path(__file__).resolve().parent.parent


# The model server ---------------------------------------------------------------------


class _ModelHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self._model = OnnxClassifier(MODEL_PATH, load_meta(META_PATH))
        self._handlers = {
            INFER: grpc.unary_unary_rpc_method_handler(self._infer),
            PASSTHROUGH: grpc.unary_unary_rpc_method_handler(self._infer),
            SERVER_READY: grpc.unary_unary_rpc_method_handler(self._ready),
        }

    def service(self, details: Any) -> Any:
        return self._handlers.get(details.method)

    async def _ready(self, request: bytes, context: Any) -> bytes:
        ready: bytes = ServerReadyResponse(ready=True).SerializeToString()
        return ready

    async def _infer(self, request: bytes, context: Any) -> bytes:
        req = ModelInferRequest.FromString(request)
        shape = list(req.inputs[0].shape)
        x = np.frombuffer(req.raw_input_contents[0], dtype="<f4").reshape(shape)
        label, proba = self._model.predict(x)
        out = ModelInferResponse(model_name=req.model_name, id=req.id)
        for name, value, dtype in (("label", label, "INT64"), ("probabilities", proba, "FP32")):
            out.outputs.add(name=name, datatype=dtype, shape=list(value.shape))
            out.raw_output_contents.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
        answer: bytes = out.SerializeToString()
        return answer


async def serve_model(port: int) -> None:
    server = grpc.aio.server(handlers=[_ModelHandler()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# The load -----------------------------------------------------------------------------


def _payload() -> bytes:
    meta = load_meta(META_PATH)
    x = np.random.default_rng(1).uniform(0, 5, size=(1, len(meta.feature_names)))
    req = ModelInferRequest(model_name=meta.name, id="bench")
    req.inputs.add(name=meta.input_name, datatype="FP32", shape=[1, len(meta.feature_names)])
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    data: bytes = req.SerializeToString()
    return data


async def run_load(
    target: str, payload: bytes, rate: float, duration_s: float, method: str = INFER
) -> dict[str, Any]:
    """Open loop at `rate` calls/s for `duration_s`; latencies from each call's scheduled time."""
    metadata = (("x-request-id", "bench"), ("x-group-attributes", "gender=F; age_band=30-39"))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lag_max = 0.0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(method)
        await stub(payload, metadata=metadata, timeout=10)

        async def one(scheduled: float) -> None:
            try:
                await stub(payload, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1
                return
            latencies.append(time.perf_counter() - scheduled)

        n = int(rate * duration_s)
        tasks = []
        start = time.perf_counter() + 0.01
        cpu0 = time.process_time()
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
            tasks.append(asyncio.ensure_future(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    return {
        "latencies": latencies,
        "errors": errors,
        "elapsed_s": elapsed,
        "lag_max_ms": lag_max * 1000.0,
        "loadgen_cpu_us_per_call": 1e6 * cpu / max(n, 1),
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    lat = np.concatenate([np.asarray(r["latencies"]) for r in rounds]) * 1000.0
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
    errors: dict[str, int] = {}
    for r in rounds:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "calls": int(lat.size),
        "calls_per_s": lat.size / sum(r["elapsed_s"] for r in rounds),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "p999_ms": float(p999),
        "errors": errors,
        "loadgen_lag_max_ms": max(r["lag_max_ms"] for r in rounds),
        "loadgen_cpu_us_per_call": float(np.mean([r["loadgen_cpu_us_per_call"] for r in rounds])),
        "round_p50_ms": [float(np.percentile(r["latencies"], 50) * 1000) for r in rounds],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_grpc(target: str, timeout_s: float = 30.0) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)


def _report(result: dict[str, Any]) -> str:
    d, s = result["direct"], result["sidecar"]
    lines = [
        f"gRPC ModelInfer, open loop {result['rate']:g} calls/s, "
        f"{result['rounds']} rounds x {result['round_s']:g} s per path, {result['date']}",
        "path                    calls/s   p50 ms   p99 ms  p99.9 ms  errors",
    ]
    paths = [("direct", d), ("sidecar", s)]
    for name in ("passthrough", "sidecar-grpcio-defaults"):
        if name in result:
            paths.append((name, result[name]))
    for name, r in paths:
        lines.append(
            f"{name:<23} {r['calls_per_s']:6.1f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
            f"{r['p999_ms']:9.3f}  {r['errors'] or '-'}"
        )
    a = result["added"]
    lines.append(
        f"added: p50 {a['p50_ms']:.3f} ms (target <= {TARGETS['added_p50_ms']}), "
        f"p99 {a['p99_ms']:.3f} ms (target <= {TARGETS['added_p99_ms']}); "
        f"ratios p50 x{s['p50_ms'] / d['p50_ms']:.2f}, p99 x{s['p99_ms'] / d['p99_ms']:.2f}"
    )
    if "passthrough" in result:
        p = result["passthrough"]
        lines.append(
            f"passthrough (no decision) added: p50 {p['p50_ms'] - d['p50_ms']:.3f} ms, "
            f"p99 {p['p99_ms'] - d['p99_ms']:.3f} ms; "
            f"its sidecar CPU per call: {result['passthrough_cpu_us_per_call']:.0f} us"
        )
    if "sidecar-grpcio-defaults" in result:
        g = result["sidecar_grpcio_defaults_cpu_us_per_call"]
        lines.append(
            f"sidecar with grpcio's defaults: CPU per call {g:.0f} us; "
            f"this sidecar's is x{result['sidecar_cpu_us_per_call'] / g:.2f} of it"
        )
    lines.append(
        f"model server CPU per direct call: {result['model_server_cpu_us_per_call']:.0f} us; "
        f"sidecar CPU per call: {result['sidecar_cpu_us_per_call']:.0f} us; "
        f"load generator lag max {max(d['loadgen_lag_max_ms'], s['loadgen_lag_max_ms']):.1f} ms"
    )
    lines.append(f"decisions recorded: {result['decisions']:g}")
    return "\n".join(lines)


def _decisions(control_url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{control_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sidecar_decisions_total"):
            total += float(line.rpartition(" ")[2])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per path")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON result")
    parser.add_argument("--no-passthrough", action="store_true", help="leave the baseline path out")
    parser.add_argument(
        "--ab-grpcio-defaults",
        action="store_true",
        help="a second sidecar with grpcio's default experiments, in the same rotation",
    )
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help="do not wait for other benchmarks (a smoke run, whose figures mean nothing)",
    )
    parser.add_argument("--serve-model", type=int, metavar="PORT", help="only run the model server")
    args = parser.parse_args(argv)
    if args.serve_model:
        uvloop.run(serve_model(args.serve_model))
        return 0
    # One benchmark at a time on the machine (bench_proxy's lock): they would measure each other.
    with contextlib.nullcontext() if args.no_lock else _exclusive(LOCK_PATH):
        return _run(args)


def _run(args: argparse.Namespace) -> int:

    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    model_port = _free_port()
    model = subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench_grpc", "--serve-model", str(model_port)],
        cwd=_REPO,
        # A model server as it comes: grpcio's defaults (this process may have the sidecar's).
        env=os.environ | {"GRPC_EXPERIMENTS": ""},
    )
    sidecars: dict[str, tuple[SidecarProcess, dict[str, str]]] = {}
    # The HTTP upstream carries no load here, but /readyz asks it an HTTP/1.1 question,
    # which the gRPC port cannot answer: a fixed-answer HTTP server stands beside it.
    http_upstream = FastUpstreamProcess()
    try:
        _wait_grpc(f"127.0.0.1:{model_port}")
        http_url = http_upstream.start()
        upstream = f"http://127.0.0.1:{model_port}"
        # Each sidecar: its name and the GRPC_EXPERIMENTS it starts with (None: unset, so
        # the sidecar's own default applies).
        variants: list[tuple[str, str | None]] = [("sidecar", None)]
        if args.ab_grpcio_defaults:
            variants.append(("sidecar-grpcio-defaults", ""))
        paths: dict[str, tuple[str, str, str | None]] = {
            "direct": (f"127.0.0.1:{model_port}", INFER, None)
        }
        for name, experiments in variants:
            folder = work / name
            folder.mkdir()
            grpc_port = _free_port()
            write_config(
                folder / "sidecar.toml",
                http_url,
                {
                    "proxy": {"grpc_listen": f"127.0.0.1:{grpc_port}", "grpc_upstream": upstream},
                    "sink": {"directory": str(folder / "events")},
                    "review": {"db_path": str(folder / "review.db")},
                },
            )
            proc = SidecarProcess(
                [sys.executable, "-m", "sidecar.cli"],
                folder / "sidecar.toml",
                _REPO,
                folder / "sidecar.log",
                None,
            )
            saved = os.environ.pop("GRPC_EXPERIMENTS", None)
            if experiments is not None:
                os.environ["GRPC_EXPERIMENTS"] = experiments
            try:
                sidecars[name] = (proc, proc.start())
            finally:
                if saved is None:
                    os.environ.pop("GRPC_EXPERIMENTS", None)
                else:
                    os.environ["GRPC_EXPERIMENTS"] = saved
            paths[name] = (f"127.0.0.1:{grpc_port}", INFER, name)
            if name == "sidecar" and not args.no_passthrough:
                paths["passthrough"] = (f"127.0.0.1:{grpc_port}", PASSTHROUGH, name)
        payload = _payload()
        for target, method, _sc in paths.values():
            uvloop.run(run_load(target, payload, args.rate, args.warmup, method))
        per_round = args.duration / args.rounds
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        cpu = dict.fromkeys(paths, 0.0)
        names = list(paths)
        for i in range(args.rounds):
            # Rotated each round, so drift in the machine hits every path alike.
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                target, method, sc = paths[name]
                pid = sidecars[sc][0].pid if sc else model.pid
                c0 = cpu_seconds(pid)
                rounds[name].append(
                    uvloop.run(run_load(target, payload, args.rate, per_round, method))
                )
                cpu[name] += cpu_seconds(pid) - c0
        direct, through = _summary(rounds["direct"]), _summary(rounds["sidecar"])
        result = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "rate": args.rate,
            "rounds": args.rounds,
            "round_s": per_round,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "direct": direct,
            "sidecar": through,
            "added": {
                "p50_ms": through["p50_ms"] - direct["p50_ms"],
                "p99_ms": through["p99_ms"] - direct["p99_ms"],
            },
            "model_server_cpu_us_per_call": 1e6 * cpu["direct"] / max(direct["calls"], 1),
            "sidecar_cpu_us_per_call": 1e6 * cpu["sidecar"] / max(through["calls"], 1),
            "decisions": _decisions(sidecars["sidecar"][1]["control"]),
        }
        for name in names:
            if name in ("direct", "sidecar"):
                continue
            summary = _summary(rounds[name])
            key = name.replace("-", "_")
            result[name] = summary
            result[f"{key}_cpu_us_per_call"] = 1e6 * cpu[name] / max(summary["calls"], 1)
        print(_report(result))
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"grpc-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
        out.write_text(json.dumps(result, indent=1))
        print(f"result: {out}")
    finally:
        for proc, _urls in sidecars.values():
            proc.stop()
        http_upstream.stop()
        model.terminate()
        model.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
