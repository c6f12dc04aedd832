"""The gRPC benchmark: ModelInfer direct and through the sidecar, alternating, in one run.

    python -m loadtests.bench_grpc --rate 500 --duration 60 --rounds 6 [--set sampling.rate=0]

The load is open loop, the HTTP benchmark's method: call i is started at t0 + i/rate
whatever the server does, on one HTTP/2 connection that never makes a call wait for a
free one, so its latency counts from its start (the timer's jitter, and any stall of the
generator's own, is reported apart as its lag, as loadtests/loadgen.py does). One single-row FP32 call in `raw_input_contents`
(what tritonclient sends), with a request id and group attributes in the metadata, so
every call through the sidecar is a recorded decision. As in loadtests/bench_proxy.py the
generator and the model server share one core and the sidecar (with its control process)
has the other (`--no-pin` leaves placement to the kernel), and the paths rotate each round.

`--generator go` (the default) calls with grpc-go (loadtests/grpc_go_hop/, built with `go`
into .cache/) against a grpc-go server that answers every call with the demo model's
answer to the payload, computed once: the gRPC counterpart of the HTTP benchmark's
fixed-answer upstream, tens of microseconds a call, so the other core's queueing does not
set the tail. `--generator python` is the earlier method: grpcio's asyncio client, and the
demo onnxruntime model behind grpcio's asyncio server (`--serve-model PORT` runs it alone),
together about 1.3 ms of CPU a call on the generator's core.

Prints calls/s and p50/p99/p99.9 per path, what the sidecar adds, and its CPU time per
call (utime + stime from /proc over its rounds, its control process included). Writes the
result as JSON to loadtests/results/.

A third path, `passthrough`, is the same-run baseline for the hop: the same message
through the same sidecar under a method it forwards without reading (`ModelStatistics`,
one of the protocol's unary methods, which the model server answers as it answers
ModelInfer), so no decision is made (`--no-passthrough` leaves it out).

`--set SECTION.KEY=VALUE` configures the sidecar (e.g. `sampling.rate=0`); `--ab-set`
adds a second sidecar, `sidecar-b`, with those settings on top, to the same rotation: the
same-run A/B for a setting. `--ab-sidecar COMMAND` runs `sidecar-b` by another command (an
export of another commit), as bench_proxy's `--base-sidecar`: the A/B of two versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
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

from loadtests.bench_proxy import LOCK_PATH, RESULTS_DIR, _exclusive, parse_set, write_config
from loadtests.grpc_go import GO_BINARY, build_go
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
METADATA = (("x-request-id", "bench"), ("x-group-attributes", "gender=F; age_band=30-39"))
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
        return model_answer(self._model, request)


def model_answer(model: OnnxClassifier, request: bytes) -> bytes:
    """The demo model's ModelInfer answer to `request`, outputs in raw contents as Triton's."""
    req = ModelInferRequest.FromString(request)
    shape = list(req.inputs[0].shape)
    x = np.frombuffer(req.raw_input_contents[0], dtype="<f4").reshape(shape)
    label, proba = model.predict(x)
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
    """Open loop at `rate` calls/s for `duration_s` on one channel. A call never waits for a
    free connection (HTTP/2 multiplexes), so as loadtests/loadgen.py's request on a free
    connection its latency counts from its start; the timer's jitter is the lag, apart."""
    metadata = METADATA
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lag_max = 0.0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = channel.unary_unary(method)
        await stub(payload, metadata=metadata, timeout=10)

        async def one() -> None:
            started = time.perf_counter()
            try:
                await stub(payload, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1
                return
            latencies.append(time.perf_counter() - started)

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
            tasks.append(asyncio.ensure_future(one()))
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
        f"generator: {result['generator']}; pinning: {result['pinning']};"
        f" settings: {' '.join(result['set']) or 'defaults'}",
        "path                    calls/s   p50 ms   p99 ms  p99.9 ms  errors",
    ]
    paths = [("direct", d), ("sidecar", s)]
    for name in ("passthrough", "sidecar-b"):
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
    if "sidecar-b" in result:
        b = result["sidecar-b"]
        what = " ".join(
            [*result["ab_set"], *([result["ab_sidecar"]] if result["ab_sidecar"] else [])]
        )
        lines.append(
            f"sidecar-b ({what}) added: p50 {b['p50_ms'] - d['p50_ms']:.3f} ms,"
            f" p99 {b['p99_ms'] - d['p99_ms']:.3f} ms; CPU per call "
            f"{result['sidecar_b_cpu_us_per_call']:.0f} us against the sidecar's "
            f"{result['sidecar_cpu_us_per_call']:.0f}"
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
        "--generator",
        choices=("go", "python"),
        default="go",
        help="go: grpc-go's generator and a fixed-answer grpc-go model server (built with `go`);"
        " python: grpcio's client and the demo model behind grpcio's server",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a sidecar setting, e.g. sampling.rate=0 (repeatable)",
    )
    parser.add_argument(
        "--ab-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="add a second sidecar, `sidecar-b`, with these settings on top of --set (repeatable)",
    )
    parser.add_argument(
        "--ab-sidecar",
        default=None,
        metavar="COMMAND",
        help="add `sidecar-b` run by COMMAND (e.g. `env PYTHONPATH=/tmp/base .venv/bin/sidecar` for"
        " an export of another commit), with --ab-set's settings if any: an A/B of two versions",
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
    if args.generator == "go" and not build_go():
        parser.error("the grpc-go generator did not build: install Go, or use --generator python")
    cores = os.sched_getaffinity(0)
    # One benchmark at a time on the machine (bench_proxy's lock): they would measure each other.
    try:
        with contextlib.nullcontext() if args.no_lock else _exclusive(LOCK_PATH):
            return _run(args)
    finally:
        os.sched_setaffinity(0, cores)


def _model_server(
    args: argparse.Namespace, work: Path, cpus: set[int] | None
) -> tuple[subprocess.Popen[bytes], int]:
    """The model server on `cpus`, and its port."""
    if args.generator == "python":
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.bench_grpc", "--serve-model", str(port)],
            cwd=_REPO,
            # A model server as it comes: grpcio's defaults (this process may have the sidecar's).
            env=os.environ | {"GRPC_EXPERIMENTS": ""},
        )
    else:
        answer = work / "answer.bin"
        answer.write_bytes(
            model_answer(OnnxClassifier(MODEL_PATH, load_meta(META_PATH)), _payload())
        )
        proc = subprocess.Popen(
            [str(GO_BINARY), "-serve-answer", str(answer)],
            stdout=subprocess.PIPE,
            env=os.environ | {"GOMAXPROCS": "1"},
        )
        assert proc.stdout is not None
        port = int(proc.stdout.readline().decode().rpartition(":")[2])
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    return proc, port


def run_go_load(
    target: str,
    payload_path: Path,
    rate: float,
    duration_s: float,
    method: str,
    cpus: set[int] | None,
) -> dict[str, Any]:
    """The grpc-go generator's open loop (the same method as run_load), as run_load reports it."""
    proc = subprocess.run(
        [
            str(GO_BINARY),
            "-load",
            target,
            "-method",
            method,
            "-payload",
            str(payload_path),
            "-rate",
            str(rate),
            "-duration",
            str(duration_s),
            "-metadata",
            "\n".join(f"{k}={v}" for k, v in METADATA),
        ],
        capture_output=True,
        check=True,
        env=os.environ | {"GOMAXPROCS": "1"},
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        timeout=duration_s + 60,
    )
    out: dict[str, Any] = json.loads(proc.stdout)
    out["latencies"] = [us / 1e6 for us in out.pop("latencies_us")]
    return out


def _run(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    # As bench_proxy: the generator and the model server on one core, the sidecar on the other.
    near: set[int] | None = {cores[0]} if pin else None
    far: set[int] | None = {cores[1]} if pin else None
    if near:
        os.sched_setaffinity(0, near)
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    payload = _payload()
    payload_path = work / "payload.bin"
    payload_path.write_bytes(payload)
    base_settings = parse_set(args.set)
    model, model_port = _model_server(args, work, near)
    sidecars: dict[str, tuple[SidecarProcess, dict[str, str]]] = {}
    # The HTTP upstream carries no load here, but /readyz asks it an HTTP/1.1 question,
    # which the gRPC port cannot answer: a fixed-answer HTTP server stands beside it.
    http_upstream = FastUpstreamProcess(cpus=near)
    try:
        _wait_grpc(f"127.0.0.1:{model_port}")
        http_url = http_upstream.start()
        upstream = f"http://127.0.0.1:{model_port}"
        variants: list[tuple[str, dict[str, dict[str, Any]]]] = [("sidecar", base_settings)]
        if args.ab_set or args.ab_sidecar:
            b = {k: dict(v) for k, v in base_settings.items()}
            for section, values in parse_set(args.ab_set).items():
                b.setdefault(section, {}).update(values)
            variants.append(("sidecar-b", b))
        paths: dict[str, tuple[str, str, str | None]] = {
            "direct": (f"127.0.0.1:{model_port}", INFER, None)
        }
        for name, settings in variants:
            folder = work / name
            folder.mkdir()
            grpc_port = _free_port()
            extra: dict[str, dict[str, Any]] = {
                "proxy": {"grpc_listen": f"127.0.0.1:{grpc_port}", "grpc_upstream": upstream},
                "sink": {"directory": str(folder / "events")},
                "review": {"db_path": str(folder / "review.db")},
            }
            for section, values in settings.items():
                extra.setdefault(section, {}).update(values)
            write_config(folder / "sidecar.toml", http_url, extra)
            command, cwd = [sys.executable, "-m", "sidecar.cli"], _REPO
            if name == "sidecar-b" and args.ab_sidecar:
                # Run from its own folder: `python -m` puts the working folder first on
                # sys.path, which would import this checkout's package instead.
                command, cwd = shlex.split(args.ab_sidecar), folder
            proc = SidecarProcess(
                command,
                folder / "sidecar.toml",
                cwd,
                folder / "sidecar.log",
                far,
            )
            sidecars[name] = (proc, proc.start())
            paths[name] = (f"127.0.0.1:{grpc_port}", INFER, name)
            if name == "sidecar" and not args.no_passthrough:
                paths["passthrough"] = (f"127.0.0.1:{grpc_port}", PASSTHROUGH, name)

        def load(target: str, method: str, seconds: float) -> dict[str, Any]:
            if args.generator == "go":
                return run_go_load(target, payload_path, args.rate, seconds, method, near)
            return uvloop.run(run_load(target, payload, args.rate, seconds, method))

        for target, method, _sc in paths.values():
            load(target, method, args.warmup)
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
                rounds[name].append(load(target, method, per_round))
                cpu[name] += cpu_seconds(pid) - c0
        direct, through = _summary(rounds["direct"]), _summary(rounds["sidecar"])
        result = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "rate": args.rate,
            "rounds": args.rounds,
            "round_s": per_round,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "generator": args.generator,
            "pinning": (
                f"generator+model server on cpu {cores[0]}, sidecar on cpu {cores[1]}"
                if pin
                else "none"
            ),
            "set": args.set,
            "ab_set": args.ab_set,
            "ab_sidecar": args.ab_sidecar,
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
