"""A control app served on a thread and event loop of its own (the hub's), and the loop factory.

The sidecar's control plane is a process of its own (`sidecar.control.process`):
a thread beside the data plane still shared its interpreter lock and its core
(p99 1.68x the quiet sidecar's at best, 3.23x with `audit verify` on that core).
The hub has no data plane to protect; its API runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from sidecar.priority import lower_thread

log = logging.getLogger("sidecar.control")

Housekeeping = Callable[[], Coroutine[Any, Any, None]]


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the service."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed: measured cheaper per request than the default loop."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def control_config(app: Any, log_level: int) -> uvicorn.Config:
    """How a control app is served, in the sidecar's control process and at the hub: on the
    caller's loop (loop="none"), no access log, no server or date header."""
    return uvicorn.Config(
        app,
        http="httptools",
        loop="none",
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=False,
        log_level=log_level,
        timeout_keep_alive=75,
        backlog=2048,
    )


class ControlPlaneThread:
    """Serves the control app on `sock` from its own thread; `on_exit` runs when it stops."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        housekeeping: list[Housekeeping],
        on_exit: Callable[[], None],
        nice: int = 0,
    ) -> None:
        self._server = _Server(control_config(app, logging.WARNING))
        self._sock = sock
        self._housekeeping = housekeeping
        self._on_exit = on_exit
        self._nice = nice
        self._thread = threading.Thread(target=self._run, name="control-plane", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; raise what stopped the start, if anything did."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"control plane did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        # Linux schedules threads one by one: a nice control thread (and the worker threads
        # it starts, which inherit it) yields the sidecar's core to the data plane at once.
        with contextlib.suppress(OSError):
            lower_thread(threading.get_native_id(), self._nice, idle=False)
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            log.exception("control plane stopped with an error")
        finally:
            self._ready.set()
            loop.close()
            self._on_exit()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        serving = loop.create_task(self._server._serve([self._sock]))
        chores = [loop.create_task(job()) for job in self._housekeeping]
        try:
            while not self._server.started:
                if serving.done():
                    serving.result()  # surfaces a start failure
                    return
                await asyncio.sleep(0.005)
            self._ready.set()
            await serving
        finally:
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
