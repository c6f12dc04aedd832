"""A real MLServer 1.7 serving the demo's ONNX credit model, for tests that need a real model server.

MLServer's dependencies pin versions of FastAPI, uvicorn and protobuf that differ
from the sidecar's, so it lives in its own virtual environment
(`tests.toolvenv`: built once per machine from PyPI, about a minute). The model is served by a custom runtime (tests/mlserver_model/runtime.py)
over onnxruntime, the same artifact the demo serves. MLServer speaks V2 JSON over
HTTP and the Open Inference Protocol over gRPC; it does not take the binary tensor
extension (tests/v2_binary_model.py stands in for Triton there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sidecar.demo.model import META_PATH, MODEL_PATH, load_meta
from tests.servers import free_port
from tests.toolvenv import tool_venv

MLSERVER_VERSION = "1.7.1"
_RUNTIME = Path(__file__).resolve().parent / "mlserver_model" / "runtime.py"


def ensure_venv() -> Path:
    """The MLServer executable, from its own venv (built on first use: `tests.toolvenv`)."""
    return (
        tool_venv("mlserver", [f"mlserver=={MLSERVER_VERSION}", "onnxruntime"]) / "bin" / "mlserver"
    )


@dataclass(frozen=True)
class MLServer:
    http_url: str
    grpc_target: str
    model: str
    version: str


@contextmanager
def running_mlserver(workdir: Path) -> Iterator[MLServer]:
    """Start MLServer on free loopback ports with the credit model; stop it on exit."""
    exe = ensure_venv()
    meta = load_meta(META_PATH)
    repo = workdir / "mlserver-repo"
    model_dir = repo / meta.name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(_RUNTIME, model_dir / "runtime.py")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (repo / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                # One process: the default forks inference workers, which a test does not need.
                "parallel_workers": 0,
                "debug": False,
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": meta.name,
                "implementation": "runtime.CreditOnnx",
                "parameters": {"uri": str(MODEL_PATH), "version": meta.version},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = open(workdir / "mlserver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(exe), "start", str(repo)], cwd=str(model_dir), env=env, stdout=log, stderr=log
    )
    http_url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"MLServer exited {proc.returncode}: {(workdir / 'mlserver.log').read_text()[-3000:]}"
                )
            try:
                url = f"{http_url}/v2/models/{meta.name}/ready"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("MLServer did not become ready in 90 s")
            time.sleep(0.2)
        yield MLServer(http_url, f"127.0.0.1:{grpc_port}", meta.name, meta.version)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
