"""Child processes for the benchmarks: upstreams on a socket the parent binds, the sidecar, CPU time."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.demo.process import ModelServerProcess, wait_ready

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# `python -m loadtests.X` finds the package from here, whatever folder the harness runs in.
_REPO = Path(__file__).resolve().parent.parent


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) from /proc/PID/stat; None once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = stat.rpartition(")")
    return head[head.index("(") + 1 :], rest.split()


def _cpu(fields: list[str]) -> float:
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _all_stats() -> dict[int, tuple[str, list[str]]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(entry)) is not None:
            found[int(entry)] = st
    return found


def has_open(pid: int, path: str | Path) -> bool:
    """Whether process `pid` has the file at `path` (an absolute, resolved path) open;
    False once it has gone."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:  # a descriptor closed while we looked
            continue
    return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live descendants (threads included)."""
    stats = [_stat(p) for p in [pid, *_descendants(pid)]]
    return sum(_cpu(st[1]) for st in stats if st is not None)


def data_plane_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a `sidecar serve`'s data plane: `pid` itself and its worker
    processes (`proxy.workers`), threads included; not its control process."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        if p != pid:
            try:
                if b"sidecar.workers.process" not in Path(f"/proc/{p}/cmdline").read_bytes():
                    continue
            except OSError:
                continue
        st = _stat(p)
        if st is not None:
            total += _cpu(st[1])
    return total


def cpu_seconds_by_command(kind: Callable[[str], str | None]) -> dict[str, float]:
    """CPU seconds so far of every process on the machine, summed by `kind(command name)`
    (processes it maps to None left out)."""
    out: dict[str, float] = {}
    for name, fields in _all_stats().values():
        k = kind(name)
        if k is not None:
            out[k] = out.get(k, 0.0) + _cpu(fields)
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p, (_, fields) in _all_stats().items():
        children.setdefault(int(fields[1]), []).append(p)
    out: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def pin_descendants(pid: int, cpus: set[int]) -> int:
    """Pin every thread of `pid`'s descendants (not `pid` itself) to `cpus`; how many
    processes were pinned. Affinity is per thread on Linux, so each task is set."""
    pinned = 0
    for p in _descendants(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except (FileNotFoundError, ProcessLookupError):
            continue
        pinned += 1
    return pinned


class FdServerProcess:
    """`python -m MODULE --fd N ARGS` on a socket the parent binds; `start()` returns its URL."""

    def __init__(
        self,
        module: str,
        args: tuple[str, ...] = (),
        cpus: set[int] | None = None,
        host: str = "127.0.0.1",
        python: str = sys.executable,
    ) -> None:
        self._module = module
        self._python = python
        self._args = args
        self._cpus = cpus
        self._host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> str:
        sock = socket.create_server((self._host, 0), backlog=1024)
        self.url = f"http://{self._host}:{sock.getsockname()[1]}"
        try:
            self.proc = subprocess.Popen(
                [self._python, "-m", self._module, "--fd", str(sock.fileno()), *self._args],
                pass_fds=(sock.fileno(),),
                cwd=_REPO,
                stdout=subprocess.DEVNULL,
            )
        finally:
            sock.close()
        if self._cpus:
            os.sched_setaffinity(self.proc.pid, self._cpus)
        wait_ready(f"{self.url}/v2/health/ready", timeout_s, self.proc)
        return self.url

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class FastUpstreamProcess(FdServerProcess):
    """The fixed-response V2 upstream (`python -m loadtests.upstreams`)."""

    def __init__(self, cpus: set[int] | None = None, host: str = "127.0.0.1") -> None:
        super().__init__("loadtests.upstreams", (), cpus, host)


class BareProxyProcess(FdServerProcess):
    """The byte-pipe proxy (`python -m loadtests.bare_proxy`) in front of `upstream`."""

    def __init__(
        self, upstream: str, cpus: set[int] | None = None, python: str = sys.executable
    ) -> None:
        super().__init__("loadtests.bare_proxy", ("--upstream", upstream), cpus, python=python)


def start_model_server(cpus: set[int] | None) -> ModelServerProcess:
    server = ModelServerProcess(cpus=cpus)
    server.start()
    return server


class SidecarProcess:
    """`sidecar serve --config FILE` as a child; learns its URLs from the lines it prints.

    Output goes to `log_path` (read by a thread, so a chatty sidecar never blocks on a full pipe).
    """

    _URL = re.compile(r"^(proxy|control): (http://\S+)")

    def __init__(
        self, command: list[str], config: Path, cwd: Path, log_path: Path, cpus: set[int] | None
    ) -> None:
        self._cmd = [*command, "serve", "--config", str(config)]
        self._cwd = cwd
        self._log_path = log_path
        self._cpus = cpus
        self.proc: subprocess.Popen[str] | None = None
        self.urls: dict[str, str] = {}
        self._seen = threading.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}
        self.proc = subprocess.Popen(
            self._cmd,
            cwd=self._cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if self._cpus:
            os.sched_setaffinity(self.proc.pid, self._cpus)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        # The URL lines come once the sockets are bound; readiness is the control plane's call.
        if not self._seen.wait(timeout_s) or "control" not in self.urls:
            self.stop()
            tail = (
                self._log_path.read_text(errors="replace")[-2000:]
                if self._log_path.exists()
                else ""
            )
            raise RuntimeError(f"sidecar did not start; {self._log_path} ends:\n{tail}")
        try:
            wait_ready(f"{self.urls['control']}/readyz", deadline - time.monotonic(), self.proc)
        except BaseException:
            self.stop()
            raise
        return self.urls

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self._log_path, "a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                m = self._URL.match(line)
                if m:
                    self.urls[m.group(1)] = m.group(2)
                    if {"proxy", "control"} <= self.urls.keys():
                        self._seen.set()
        self._seen.set()

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
