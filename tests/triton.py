"""A real Triton Inference Server for tests that need one: it speaks the binary tensor extension.

NVIDIA PyTriton (PyPI: nvidia-pytriton) bundles the tritonserver binary and its
Python backend; it runs on CPU. Its Python backend stub links the system's
libpython3.11 (Debian's), so its virtual environment must be made with Debian's
own /usr/bin/python3.11: with another 3.11 build the stub and the standard library
disagree (multiprocessing fails in the model's initialisation). Built on first use
once per machine (`tests.toolvenv`, about two minutes).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port
from tests.toolvenv import tool_venv

SYSTEM_PYTHON = Path("/usr/bin/python3.11")
PYTRITON_VERSION = "0.7.0"
_SERVER = Path(__file__).resolve().parent / "triton_model" / "server.py"


def available() -> str | None:
    """None when Triton can run here; otherwise why not (a test skips with it)."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} (the libpython PyTriton's stub links) is not on this machine"
    return None


def ensure_venv() -> Path:
    venv = tool_venv("pytriton", [f"nvidia-pytriton=={PYTRITON_VERSION}"], python=SYSTEM_PYTHON)
    return venv / "bin" / "python"


@dataclass(frozen=True)
class TritonServer:
    http_url: str
    grpc_target: str
    model: str = "credit"


def _stop_leftovers(http_port: int) -> None:
    """PyTriton leaves tritonserver (and its stub) running when it is signalled: find them by port."""
    mark = f"--http-port\0{http_port}\0".encode()
    parents: dict[int, int] = {}
    roots: list[int] = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
            stat = (proc_dir / "stat").read_text()
        except OSError:
            continue
        pid = int(proc_dir.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if b"tritonserver" in cmdline and mark in cmdline:
            roots.append(pid)
    doomed = set(roots)
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in doomed} - doomed
        doomed |= children
        grew = bool(children)
    for pid in doomed:
        with suppress(ProcessLookupError):
            os.kill(pid, 9)


@contextmanager
def running_triton(workdir: Path) -> Iterator[TritonServer]:
    python = ensure_venv()
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log_path = workdir / "triton.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(python), str(_SERVER), str(http_port), str(grpc_port), str(metrics_port)],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Triton exited {proc.returncode}: {log_path.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/v2/models/credit/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Triton not ready in 120 s: {log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield TritonServer(url, f"127.0.0.1:{grpc_port}")
    finally:
        # PyTriton starts tritonserver and a Python backend stub: stop the whole group.
        try:
            os.killpg(proc.pid, 15)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        _stop_leftovers(http_port)
        log.close()
