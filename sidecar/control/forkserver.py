"""Control processes forked from a server that has already imported the control plane.

A fresh interpreter spends ~1.3 s (quiet 2-core VM; over 3 s loaded) importing
FastAPI, numba and the explainers before the control plane can serve, and ~0.2-0.8 s
tearing them down at exit. One fork server per Python process, started on the
first control-process start (`python -m sidecar.control.forkserver`, in the same
environment and PYTHONPATH a control process had), pays the imports once; every
control process after it is an `os.fork` of it that runs `sidecar.control.process`'s
`main` exactly as the exec'd process did, and leaves with `os._exit`.

The fork server never starts a Python thread (it refuses to fork if one exists: a
fork copies only the forking thread, and a lock another thread held stays held). Per
control process the data plane sends, by SCM_RIGHTS, the control socket, the
bridge's end, a pipe that becomes the child's stdin (its arguments, working
directory and environment, then the pickled settings), its own current stdout and
stderr, and a status socket on which the server answers the child's pid and a
pidfd for it, and later its exit status (as `subprocess` reports it: -9 for
SIGKILL). The child is the fork server's, not the data plane's: `ForkedProcess`
gives the supervisor what it used of `subprocess.Popen` (pid, poll, wait,
terminate, kill); signals go through the pidfd, so a reused pid is never signalled.

The fork server exits when the process that started it closes its channel (at its
exit, however it dies); control processes it forked keep running until their
bridge closes, as before. In a process that starts one service it saves nothing at
the first start, but a restarted control process serves in tenths of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Sequence
from pathlib import Path

import sidecar

# What the fork server imports before it forks: everything a control process runs, and
# what FastAPI imports only at its first route (pydantic.v1, to tell v1 models apart).
PRELOAD = ("sidecar.control.process", "pydantic.v1")
# The fork server's imports come first: on a loaded machine they took over 10 s.
START_TIMEOUT_S = 60.0
# The package's root: the fork server imports this very code, whatever its sys.path would say.
_ROOT = str(Path(sidecar.__file__).resolve().parent.parent)
_PID = struct.Struct("!i")
# Per fork request: control socket, bridge, stdin, stdout, stderr, status socket.
_FDS = 6


class ForkServerError(RuntimeError):
    """The fork server could not be started, or could not fork a control process."""


class ForkedProcess:
    """A control process forked by the fork server: the part of `subprocess.Popen` the
    supervisor uses. Several threads may wait on one (the supervisor's watcher and stop)."""

    def __init__(self, pid: int, pidfd: int, status: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._status = status
        self._lock = threading.Lock()
        self._server_gone = False
        weakref.finalize(self, os.close, pidfd)

    def poll(self) -> int | None:
        return self._wait(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"control process {self.pid}", timeout or 0.0)
        return code

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if not self._server_gone:
            if not _readable(self._status.fileno(), timeout):
                return None
            with self._lock:
                if self.returncode is None and not self._server_gone:
                    try:
                        data = self._status.recv(_PID.size, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        data = None  # another waiter took it
                    if data is not None and len(data) == _PID.size:
                        self.returncode = _PID.unpack(data)[0]
                    elif data is not None:
                        self._server_gone = True
            if self.returncode is not None or not self._server_gone:
                return self.returncode
        # The fork server was killed: the child's end is seen on its pidfd, and how it ended
        # only if it came to be this process's child (a service that is a container's pid 1
        # takes orphans in): -1 otherwise.
        if not _readable(self._pidfd, timeout):
            return None
        with self._lock:
            if self.returncode is None:
                self.returncode = _reap(self._pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it has exited already
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The data plane's handle on a running fork server."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["PYTHONPATH"] = _pythonpath(env)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, "--channel-fd", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
                # Its own process group: a terminal's Ctrl-C reaches the service, which stops it.
                # Not its own session: under Linux's autogroup (`sidecar.priority`) a session
                # is a scheduling group of its own, and the control process it forks would
                # compete with the data plane as an equal, SCHED_IDLE or not.
                process_group=0,
            )
        finally:
            theirs.close()
        self._channel = ours

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        """The server exits when its channel closes."""
        self._channel.close()

    def fork(self, argv: Sequence[str], fds: Sequence[int], settings: bytes) -> ForkedProcess:
        """Fork a control process running `sidecar.control.process.main(argv)`, with `fds`
        (control socket, bridge) appended to argv as `--control-fd`/`--bridge-fd`."""
        status, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stdin_r, stdin_w = os.pipe()
        opened: list[int] = []
        try:
            socket.send_fds(
                self._channel,
                [b"f"],
                [*fds, stdin_r, _usable(1, opened), _usable(2, opened), status_theirs.fileno()],
            )
        finally:
            for fd in (stdin_r, *opened):
                os.close(fd)
            status_theirs.close()
        env = dict(os.environ)
        env["PYTHONPATH"] = _pythonpath(env)
        with open(stdin_w, "wb") as stdin:
            try:
                pickle.dump((list(argv), os.getcwd(), env), stdin)
                stdin.write(settings)
            except BrokenPipeError:
                pass  # it died at once: its status says how
        if not _readable(status.fileno(), START_TIMEOUT_S):
            raise ForkServerError(f"the fork server did not fork within {START_TIMEOUT_S} s")
        msg, pidfds, _, _ = socket.recv_fds(status, 256, 1)
        if len(msg) != _PID.size or len(pidfds) != 1:
            for fd in pidfds:
                os.close(fd)
            code = self._proc.poll()
            why = msg.decode(errors="replace") or (
                "it exited" if code is None else f"it exited with {code}"
            )
            raise ForkServerError(f"the fork server could not fork a control process: {why}")
        return ForkedProcess(_PID.unpack(msg)[0], pidfds[0], status)


def _reap(pidfd: int) -> int:
    """The exit status of an exited child of this process; -1 if it is not one."""
    try:
        found = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return -1
    if found is None:
        return -1
    killed = found.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
    return -found.si_status if killed else found.si_status


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether `fd` is readable within `timeout` seconds (None: wait for it). Not select():
    a test process holds more than its 1,024 descriptors."""
    poller = selectors.DefaultSelector()
    try:
        poller.register(fd, selectors.EVENT_READ)
        return bool(poller.select(timeout))
    finally:
        poller.close()


def _pythonpath(env: dict[str, str]) -> str:
    return os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)


def _usable(fd: int, opened: list[int]) -> int:
    """`fd` if it is open, else /dev/null's, added to `opened` (a service started without
    a stderr)."""
    try:
        os.fstat(fd)
        return fd
    except OSError:
        opened.append(os.open(os.devnull, os.O_RDWR))
        return opened[-1]


_server: ForkServer | None = None
_server_lock = threading.Lock()


def fork(argv: Sequence[str], fds: Sequence[int], settings: bytes) -> ForkedProcess:
    """Fork a control process from this process's fork server, starting the server first
    if it is not running (the first time, or after it died)."""
    global _server
    for attempt in (1, 2):
        with _server_lock:
            if _server is None or not _server.alive():
                if _server is not None:
                    _server.close()
                _server = ForkServer()
            server = _server
        try:
            return server.fork(argv, fds, settings)
        except (BrokenPipeError, ConnectionResetError):
            # It died between the look and the request: one more try, with a new one.
            if attempt == 2:
                raise ForkServerError("the fork server exited") from None
            server._proc.wait()
    raise AssertionError("unreachable")


def server_pid() -> int | None:
    """The pid of this process's fork server, if one has been started."""
    server = _server
    return None if server is None else server.pid


# The fork server's side.


def _serve(channel: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(channel, selectors.EVENT_READ)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> pid, status socket
    while True:
        for key, _ in sel.select():
            if key.fileobj is channel:
                msg, fds, _, _ = socket.recv_fds(channel, 16, _FDS)
                if not msg:
                    return  # the process that started this one has gone
                if len(fds) != _FDS:
                    for fd in fds:
                        os.close(fd)
                    continue
                *passed, status_fd = fds
                status = socket.socket(fileno=status_fd)
                # A Python thread could hold a lock (the import lock, a logging handler's)
                # that the child would find held forever. Native pools are not counted:
                # the one numpy's OpenBLAS starts at import stops itself at a fork
                # (pthread_atfork) and starts again in the child on first use.
                if threading.active_count() != 1:
                    status.send(f"the fork server has {threading.active_count()} threads".encode())
                    status.close()
                    for fd in passed:
                        os.close(fd)
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    others = [channel.fileno(), status_fd, *_own_fds(sel, children)]
                    _child(passed, others)
                for fd in passed:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                # The data plane may have given up on it: it is still reaped below.
                with contextlib.suppress(OSError):
                    socket.send_fds(status, [_PID.pack(pid)], [pidfd])
                children[pidfd] = (pid, status)
                sel.register(pidfd, selectors.EVENT_READ)
            else:
                pidfd = int(key.fd)
                pid, status = children.pop(pidfd)
                sel.unregister(pidfd)
                _, how = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    status.send(_PID.pack(os.waitstatus_to_exitcode(how)))
                status.close()
                os.close(pidfd)


def _own_fds(
    sel: selectors.BaseSelector, children: dict[int, tuple[int, socket.socket]]
) -> list[int]:
    own = [pidfd for pidfd in children] + [s.fileno() for _, s in children.values()]
    selector_fd = getattr(sel, "fileno", None)
    if selector_fd is not None:
        own.append(int(selector_fd()))
    return own


def _child(passed: list[int], others: list[int]) -> None:
    """In the forked child: become what `python -m sidecar.control.process` was, run it, exit."""
    code = 1
    try:
        for fd in others:  # the server's: its channel, selector, other children's pidfds
            os.close(fd)
        control, bridge, stdin, stdout, stderr = passed
        # A process group of its own, in the data plane's session (`ForkServer`'s comment).
        os.setpgid(0, 0)
        for fd, std in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, std)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        argv, cwd, env = pickle.load(sys.stdin.buffer)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        from sidecar.control import process

        code = process.main([*argv, "--control-fd", str(control), "--bridge-fd", str(bridge)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        # No interpreter teardown (it took 0.2-0.8 s): what needed closing, main closed.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__name__}")
    p.add_argument("--channel-fd", type=int, required=True)
    args = p.parse_args(argv)
    channel = socket.socket(fileno=args.channel_fd)
    # A terminal's Ctrl-C is the service's to handle; this process ends with its channel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in PRELOAD:
        importlib.import_module(module)
    # Everything imported lives as long as each child: frozen, a child's collections never
    # walk it (nor write to its pages, which the children share with this process).
    gc.freeze()
    _serve(channel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
