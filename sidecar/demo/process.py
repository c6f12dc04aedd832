"""Run the demo model server as a child process on a socket the parent binds.

The parent binds the listening socket and passes it down, so the port is known before the
child starts (port 0 works, no race for a free port) and readiness is a poll of
`/v2/health/ready`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from sidecar.demo.model import META_PATH, MODEL_PATH


def wait_ready(
    url: str,
    timeout_s: float = 30.0,
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
) -> None:
    """Poll `url` until it answers 200; raise TimeoutError, or RuntimeError if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with status {proc.returncode} before {url} was ready"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s ({last})")


class ModelServerProcess:
    """`python -m sidecar.demo.model_server` in a child process; a context manager.

    `start()` returns the base URL (`http://127.0.0.1:PORT`) once `/v2/health/ready` answers.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        model_path: str | Path = MODEL_PATH,
        meta_path: str | Path = META_PATH,
        python: str = sys.executable,
        cpus: set[int] | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._model_path, self._meta_path = model_path, meta_path
        self._python = python
        self._cpus = cpus
        self._log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> str:
        sock = socket.create_server((self.host, self.port), backlog=1024)
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        cmd = [
            self._python, "-m", "sidecar.demo.model_server",
            "--fd", str(sock.fileno()),
            "--model", str(self._model_path),
            "--meta", str(self._meta_path),
        ]  # fmt: skip
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                cmd,
                pass_fds=(sock.fileno(),),
                stdout=out,
                stderr=out if self._log_path else None,
            )
            if self._cpus:
                os.sched_setaffinity(self.proc.pid, self._cpus)
        finally:
            sock.close()
            if not isinstance(out, int):
                out.close()
        try:
            wait_ready(f"{self.url}/v2/health/ready", timeout_s, self.proc)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> ModelServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
