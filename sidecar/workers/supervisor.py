"""The service's process starts workers 1..N-1, restarts one that dies, and stops them.

Each worker is `python -m sidecar.workers.process`, given its listening sockets
(inherited descriptors), the settings (pickled on stdin) and one end of a socket
pair, its lifeline: the worker writes one byte on it when it serves, and either
end closing tells the other that its peer is gone. A worker that exits while the
service runs is started again on the same sockets (connections the kernel gave its
socket wait in the backlog meanwhile), up to `MAX_RESTARTS` within
`RESTART_WINDOW_S` (`sidecar.restarts`); past that the service stops with an
error naming the worker.
"""

from __future__ import annotations

import logging
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from sidecar.config import Settings
from sidecar.restarts import RestartBudget

log = logging.getLogger("sidecar.workers")

# A worker imports the data plane and loads its own explainer before it serves.
START_TIMEOUT_S = 60.0


class WorkersError(RuntimeError):
    """A worker could not be started, or kept dying."""


class _Worker:
    def __init__(
        self, index: int, proxy: socket.socket, bridge: socket.socket, grpc: socket.socket | None
    ) -> None:
        self.index = index
        self.proxy = proxy
        self.bridge = bridge
        self.grpc = grpc
        self.proc: subprocess.Popen[bytes] | None = None
        self.lifeline: socket.socket | None = None
        self.restarts = RestartBudget()
        self.watcher: threading.Thread | None = None


class WorkerSet:
    def __init__(
        self,
        *,
        settings: Settings,
        count: int,
        sockets: list[tuple[socket.socket, socket.socket, socket.socket | None]],
        control_url: str,
        on_failure: Callable[[str], None],
    ) -> None:
        self._settings = pickle.dumps(settings)
        self._count = count
        self._control_url = control_url
        self._on_failure = on_failure
        self._workers = [_Worker(k, p, b, g) for k, (p, b, g) in enumerate(sockets, start=1)]
        self._lock = threading.Lock()
        self._stopping = False

    def pids(self) -> list[int]:
        """The live workers' process ids, worker 1 first."""
        return [w.proc.pid for w in self._workers if w.proc is not None]

    def restarts(self) -> int:
        return sum(len(w.restarts) for w in self._workers)

    def start(self) -> None:
        """Start every worker at once and wait until each serves; WorkersError when one does not."""
        for w in self._workers:
            self._spawn(w)
        for w in self._workers:
            self._await_serving(w)
            w.watcher = threading.Thread(
                target=self._watch, args=(w,), name=f"worker-{w.index}-watch", daemon=True
            )
            w.watcher.start()

    def _spawn(self, w: _Worker) -> None:
        with self._lock:
            if self._stopping:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds: tuple[int, ...] = (w.proxy.fileno(), w.bridge.fileno(), theirs.fileno())
            grpc = [] if w.grpc is None else [f"--grpc-fd={w.grpc.fileno()}"]
            if w.grpc is not None:
                fds += (w.grpc.fileno(),)
            try:
                w.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "sidecar.workers.process",
                        f"--index={w.index}",
                        f"--count={self._count}",
                        f"--proxy-fd={fds[0]}",
                        f"--bridge-fd={fds[1]}",
                        f"--lifeline-fd={fds[2]}",
                        *grpc,
                        f"--control-url={self._control_url}",
                        f"--log-level={logging.getLogger().getEffectiveLevel()}",
                    ],
                    stdin=subprocess.PIPE,
                    pass_fds=fds,
                    # Out of the terminal's process group: a Ctrl-C reaches the service's
                    # process, which stops the workers; they would otherwise exit first,
                    # and be started again. A process group, not a session: a session of
                    # its own is a scheduling group of its own (`sidecar.priority`), which
                    # the control process's SCHED_IDLE would not yield to.
                    process_group=0,
                )
            finally:
                theirs.close()
            assert w.proc.stdin is not None
            try:
                w.proc.stdin.write(self._settings)
                w.proc.stdin.close()
            except OSError:
                pass  # it died at once: its exit is what the caller sees
            w.lifeline = ours

    def _await_serving(self, w: _Worker) -> None:
        lifeline, proc = w.lifeline, w.proc
        if lifeline is None or proc is None:
            return  # stopping
        lifeline.settimeout(START_TIMEOUT_S)
        try:
            said = lifeline.recv(1)
        except TimeoutError:
            proc.kill()
            raise WorkersError(
                f"worker {w.index} did not serve within {START_TIMEOUT_S:.0f} s"
            ) from None
        except OSError:
            said = b""
        if said != b"S":
            code = proc.wait()
            raise WorkersError(f"worker {w.index} exited with {code} at start")
        lifeline.settimeout(None)
        log.info("worker %d (pid %d) serving", w.index, proc.pid)

    def _watch(self, w: _Worker) -> None:
        while True:
            lifeline, proc = w.lifeline, w.proc
            assert lifeline is not None and proc is not None
            try:
                while lifeline.recv(1):
                    pass
            except OSError:
                pass
            code = proc.wait()
            lifeline.close()
            with self._lock:
                if self._stopping:
                    return
            spent = w.restarts.spend()
            if spent is not None:
                self._fail(f"worker {w.index} exited with {code}, {spent}")
                return
            log.error(
                "worker %d (pid %d) exited with %s; starting another", w.index, proc.pid, code
            )
            try:
                self._spawn(w)
                self._await_serving(w)
            except (WorkersError, OSError) as exc:
                with self._lock:
                    if self._stopping:
                        return
                if w.proc is not None and w.proc.poll() is None:
                    self._fail(f"worker {w.index} could not be started again: {exc}")
                    return
                # Died while starting: counted, and tried again at the top.
                log.error("worker %d: %s", w.index, exc)

    def _fail(self, reason: str) -> None:
        log.error("%s; the service stops", reason)
        self._on_failure(reason)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to each; a worker drains its queue and flushes its sink (5 s each at most)."""
        with self._lock:
            self._stopping = True
        for w in self._workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.terminate()
        for w in self._workers:
            proc = w.proc
            if proc is None:
                continue
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error(
                    "worker %d (pid %d) did not stop in %s s; killed", w.index, proc.pid, timeout_s
                )
                proc.kill()
                proc.wait()
            if w.lifeline is not None:
                w.lifeline.close()
        for w in self._workers:
            if w.watcher is not None and w.watcher is not threading.current_thread():
                w.watcher.join(timeout_s)
