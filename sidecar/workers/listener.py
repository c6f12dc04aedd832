"""A worker's end of the control bridge: it accepts the control process's connection.

Worker 0 (the service's own process) is reached over the socket pair it starts
the control process with. Workers 1..N-1 listen on a Unix socket instead: a
restarted control process connects again, and a restarted worker takes over the
listening socket its predecessor had (the connection waits in its backlog). One
connection is served at a time; a new one replaces the old.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Mapping

from sidecar.control.bridge import AsyncOp, BridgeServer, SyncOp

log = logging.getLogger("sidecar.workers")


class BridgeListener:
    def __init__(
        self,
        sock: socket.socket,
        *,
        ops: Mapping[str, SyncOp],
        loop_ops: Mapping[str, AsyncOp],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._sock = sock
        self._ops = ops
        self._loop_ops = loop_ops
        self._loop = loop
        self._current: BridgeServer | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="worker-bridge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed: the worker stops
            if self._closed:
                conn.close()
                return
            old, self._current = (
                self._current,
                BridgeServer(conn, ops=self._ops, loop_ops=self._loop_ops, loop=self._loop),
            )
            if old is not None:
                old.close()
            self._current.start()

    def close(self) -> None:
        """Close the connection served. The listening socket is left alone: a shutdown would
        stop it listening in the service's process too, which keeps it for the worker started
        after this one; the accepting thread (a daemon) ends with the process."""
        self._closed = True
        if self._current is not None:
            self._current.close()
