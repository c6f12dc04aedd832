"""`sidecar demo`: the embedded default, with nothing else running.

Starts the bundled model server (onnxruntime, the bundled credit model),
the sidecar in front of it with local sinks and stores, sends a little
traffic, prints what to open, and runs until interrupted.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import orjson

from explainers.errors import ExplainerError
from sidecar.config import ConfigError, Settings, load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the bundled model server with the sidecar in front")
    p.add_argument("--port", type=int, default=8080, help="data plane port (0: any free one)")
    p.add_argument("--control-port", type=int, default=8081, help="control plane port (0: any)")
    p.add_argument(
        "--state", type=Path, default=Path("var/demo"), help="where events and the review store go"
    )
    p.add_argument("--requests", type=int, default=60, help="demo calls sent at start")
    p.add_argument("--exit", action="store_true", help="stop after printing instead of running on")
    p.set_defaults(func=run)


def demo_settings(upstream: str, port: int, control_port: int, state: Path, token: str) -> Settings:
    from sidecar.demo.model import model_settings, people_settings

    return load_settings(
        overrides={
            **people_settings(),
            "proxy": {"port": port, "upstream": upstream},
            "control": {"port": control_port},
            "model": model_settings(),
            "sink": {"kind": "files", "directory": str(state / "events")},
            "review": {"db_path": str(state / "review.db"), "confidence_below": 0.7},
            "auth": {"tokens": {token: {"name": "demo-reviewer", "role": "reviewer"}}},
            "groups": {
                "derive": {
                    "age_band": {
                        "feature": "age",
                        "bins": [18, 30, 40, 50, 60],
                        "labels": ["18-29", "30-39", "40-49", "50-59", "60+"],
                    }
                }
            },
            "sampling": {"rate": 0.25},
        }
    )


def _v2_body(row: Sequence[float | None]) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    )


def _send(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("content-type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def send_traffic(proxy: str, n: int) -> list[tuple[str, str | None]]:
    """Demo calls over V2 (most), KServe V1 and MLflow; returns (decision id, review status)."""
    import math

    from sidecar.demo.data import generate

    data = generate(max(n, 1), seed=2026)
    made: list[tuple[str, str | None]] = []
    for i in range(n):
        row = [None if math.isnan(v) else round(float(v), 4) for v in data.features[i]]
        headers = {"x-group-attributes": f"gender={data.gender[i]}"}
        if i % 10 == 8:
            url, body = f"{proxy}/v1/models/credit:predict", orjson.dumps({"instances": [row]})
        elif i % 10 == 9:
            url = f"{proxy}/invocations"
            body = orjson.dumps({"dataframe_split": {"data": [row]}})
        else:
            url, body = f"{proxy}/v2/models/credit/infer", _v2_body(row)
        status, got = _send(url, body, headers)
        if status in (200, 202) and "x-decision-id" in got:
            made.append((got["x-decision-id"], got.get("x-review-status")))
    return made


def run(args: argparse.Namespace) -> int:
    from sidecar.demo.data import generate
    from sidecar.demo.process import ModelServerProcess
    from sidecar.service import ServiceThread

    state: Path = args.state
    state.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(18)
    with ModelServerProcess(log_path=state / "model-server.log") as model_server:
        try:
            settings = demo_settings(model_server.url, args.port, args.control_port, state, token)
        except ConfigError as exc:
            print(f"sidecar demo: bad configuration: {exc}", file=sys.stderr)
            return 2
        try:
            runner = ServiceThread(settings)
        except (ConfigError, ExplainerError) as exc:
            print(f"sidecar demo: cannot start: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(
                f"sidecar demo: cannot listen ({exc}); choose free ports with --port and --control-port",
                file=sys.stderr,
            )
            return 1
        with runner as service:
            made = send_traffic(service.proxy_url, args.requests)
            service.pipeline.drain(10)
            if not made:
                print("sidecar demo: no decision was made from the demo traffic", file=sys.stderr)
                return 1
            queued = [d for d, review in made if review]
            pick = queued[0] if queued else made[0][0]
            first = [round(float(v), 4) for v in generate(1, seed=99).features[0]]
            try_cmd = " ".join(
                [
                    "curl -si",
                    "-H",
                    shlex.quote("content-type: application/json"),
                    "-H",
                    shlex.quote("x-group-attributes: gender=F"),
                    "-d",
                    shlex.quote(_v2_body(first).decode()),
                    f"{service.proxy_url}/v2/models/credit/infer",
                ]
            )
            print(f"proxy: {service.proxy_url}")
            print(f"console: {service.control_url}/")
            print(f"token: {token}")
            print(f"decision: {service.control_url}/decisions/{pick}")
            print(f"try: {try_cmd}")
            print(
                f"# {len(made)} decisions made, {len(queued)} queued for review; "
                f"events in {state / 'events'}; the lookup needs "
                f"'Authorization: Bearer <token>'. Ctrl-C stops.",
                flush=True,
            )
            if args.exit:
                return 0
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    return 0
