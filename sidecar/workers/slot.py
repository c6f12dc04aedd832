"""What makes a data-plane process worker K of N: its sockets and its own share of the settings.

The service's own process is worker 0. It binds every worker's listening socket
(SO_REUSEPORT, one per worker, all on `proxy.port`, and as many on
`proxy.grpc_listen`'s port when it is set) before anything starts, so a port in
use stops the start there, and keeps them open: a worker that dies leaves
its socket's backlog waiting for the worker started in its place, not refused.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Settings


@dataclass(frozen=True)
class WorkerSlot:
    """Worker `index` of `count`: how a worker process is told what it serves."""

    index: int
    count: int
    proxy_sock: socket.socket
    # Where the control process reaches this worker (a listening Unix socket).
    bridge_sock: socket.socket
    control_url: str
    # Its gRPC listening socket, when proxy.grpc_listen is set.
    grpc_sock: socket.socket | None = None


def for_worker(settings: Settings, index: int) -> Settings:
    """`settings` as worker `index` uses them: its own spool and files folder (`worker-K/`)
    and its share of the lookup store, so no two workers write the same file."""
    n = settings.proxy.workers
    if n == 1:
        return settings
    sub = f"worker-{index}"
    d = settings.decisions
    return settings.model_copy(
        update={
            "spool": settings.spool.model_copy(
                update={"directory": settings.spool.directory / sub}
            ),
            "sink": settings.sink.model_copy(update={"directory": settings.sink.directory / sub}),
            "decisions": d.model_copy(
                update={
                    "retention": max(1, d.retention // n),
                    "retention_bytes": max(1, d.retention_bytes // n),
                }
            ),
        }
    )


def bind_reuseport(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets bound to one address with SO_REUSEPORT (port 0: the first one's port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class BridgeSockets:
    """The listening Unix sockets the control process reaches workers 1..N-1 on, in a
    folder only this user can enter (any process that connects could read decisions)."""

    def __init__(self, count: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="sidecar-workers-"))
        self.paths = [str(self.folder / f"{k}.sock") for k in range(1, count)]
        self.socks: list[socket.socket] = []
        for path in self.paths:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen(8)
            sock.set_inheritable(True)
            self.socks.append(sock)

    def close(self) -> None:
        for sock, path in zip(self.socks, self.paths, strict=True):
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)
