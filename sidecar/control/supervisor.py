"""The data plane's side of the control process: start it, answer it, restart it, stop it.

The control plane runs in a process of its own (`sidecar.control.process`),
niced, so nothing it does (HTTP parsing, JSON, SQLite queries, explanations,
console pages, metrics text) takes the data plane's interpreter lock or, on a
shared core, its time slices. This process keeps the listening control socket
(bound before anything starts, inherited by the child) and answers the child's
ops on a bridge thread (`sidecar.control.bridge`).

A control process that exits while the service runs is started again on the same
socket (connections wait in its backlog meanwhile), up to `MAX_RESTARTS` within
`RESTART_WINDOW_S` (`sidecar.restarts`); past that the service stops with an
error naming it. The child watches the bridge: whatever ends this process closes
its end, and the child stops.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping

from sidecar.config import Settings
from sidecar.control import forkserver
from sidecar.control.bridge import MAX_MESSAGE, AsyncOp, BridgeServer, SyncOp
from sidecar.control.forkserver import ForkedProcess
from sidecar.restarts import RestartBudget

log = logging.getLogger("sidecar.control")

# The child loads its own explainer before it serves (the fork server's imports are
# forkserver.START_TIMEOUT_S's).
START_TIMEOUT_S = 60.0


class ControlProcessError(RuntimeError):
    """The control process could not be started, or kept dying."""


class ControlProcess:
    def __init__(
        self,
        *,
        settings: Settings,
        sock: socket.socket,
        ops: Mapping[str, SyncOp],
        loop_ops: Mapping[str, AsyncOp],
        loop: asyncio.AbstractEventLoop,
        on_failure: Callable[[str], None],
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self._settings = pickle.dumps(settings)
        self._nice = settings.control.nice
        self._sock = sock
        self._ops = ops
        self._loop_ops = loop_ops
        self._loop = loop
        self._on_failure = on_failure
        self._max_message = max_message
        self._lock = threading.Lock()
        self._stopping = False
        self._proc: ForkedProcess | None = None
        self._bridge: BridgeServer | None = None
        self._serving = threading.Event()
        self._restarts = RestartBudget()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    @property
    def serving(self) -> bool:
        """The current control process has said it serves."""
        return self._serving.is_set()

    @property
    def restarts(self) -> int:
        return len(self._restarts)

    def start(self) -> None:
        """Start the child and wait until it serves; ControlProcessError when it does not."""
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="control-watch", daemon=True)
        self._watcher.start()

    def _serving_now(self, pid: int) -> bool:
        self._serving.set()
        return True

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._serving = threading.Event()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._bridge = BridgeServer(
                ours,
                ops={**self._ops, "serving": self._serving_now},
                loop_ops=self._loop_ops,
                loop=self._loop,
                max_message=self._max_message,
            )
            self._bridge.start()
            try:
                self._proc = forkserver.fork(
                    [
                        "--nice",
                        str(self._nice),
                        "--log-level",
                        str(logging.getLogger().getEffectiveLevel()),
                    ],
                    (self._sock.fileno(), theirs.fileno()),
                    self._settings,
                )
            except forkserver.ForkServerError as exc:
                raise ControlProcessError(str(exc)) from exc
            finally:
                theirs.close()
            proc = self._proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._serving.wait(0.05):
            code = proc.poll()
            if code is not None:
                if self._stopping:
                    return
                raise ControlProcessError(f"the control process exited with {code} at start")
            if time.monotonic() > deadline:
                proc.kill()
                raise ControlProcessError(
                    f"the control process did not serve within {START_TIMEOUT_S} s"
                )
        log.info("control process %d serving", proc.pid)

    def _watch(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    bridge = self._bridge
                if bridge is not None:
                    bridge.close()
                spent = self._restarts.spend()
                if spent is not None:
                    self._fail(f"the control process exited with {code}, {spent}")
                    return
                log.error("control process %d exited with %s; starting another", proc.pid, code)
                try:
                    self._spawn()
                    break
                except Exception as exc:
                    if self._stopping:
                        return
                    proc = self._proc
                    assert proc is not None
                    died = proc.poll()
                    if died is None:  # alive but not serving: not something a restart mends
                        self._fail(f"the control process could not be started again: {exc}")
                        return
                    code = died  # died while starting: counted, and tried again

    def _fail(self, reason: str) -> None:
        log.error("%s; the service stops", reason)
        self._on_failure(reason)

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            proc, bridge = self._proc, self._bridge
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("control process %d did not stop in %s s; killed", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        if bridge is not None:
            bridge.close()
            bridge.join(timeout_s)
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout_s)
