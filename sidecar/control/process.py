"""The control process: `python -m sidecar.control.process`, started by the service.

It serves the control port the service bound (the listening socket is inherited)
with the control app, niced (`control.nice`) from the moment it serves, so on a
shared core the data plane's process takes the time slices first. It starts at
the service's priority: niced from the first instruction, its imports and
explainer load took over 10 s on a loaded machine, and a restarted control plane
would be that long away. The settings
come pickled on stdin from the process that started it. When the bridge closes
(the data plane exited, however it died) this process stops too: no orphan holds
the control port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from sidecar.control.bridge import BridgeClient
from sidecar.control.plane import Hello, build_control_plane
from sidecar.control.server import control_config, new_event_loop
from sidecar.priority import lower_every_thread


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sidecar.control.process")
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--bridge-fd", type=int, required=True)
    p.add_argument("--nice", type=int, default=19)
    p.add_argument("--log-level", type=int, default=30)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)

    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s [control %(process)d]: %(message)s",
    )
    log = logging.getLogger("sidecar.control")
    settings = pickle.load(sys.stdin.buffer)
    control_sock = socket.socket(fileno=args.control_fd)
    bridge_sock = socket.socket(fileno=args.bridge_fd)
    server: Server | None = None

    def data_plane_gone() -> None:
        log.info("the data plane closed the bridge; the control process stops")
        if server is not None:
            server.stop_soon()
        # Whatever a request in flight is waiting on, the process does not outlive this by
        # more than 5 s. A daemon: a process already on its way out does not wait for it.
        deadline = threading.Timer(5.0, os._exit, args=(0,))
        deadline.daemon = True
        deadline.start()

    bridge = BridgeClient(bridge_sock, on_close=data_plane_gone)
    bridge.start()
    hello = Hello.of(bridge.call("hello"))
    plane = build_control_plane(settings, bridge, hello)

    class Server(uvicorn.Server):
        """Stops on SIGTERM or SIGINT and returns (uvicorn re-raises the signal at exit),
        as soon as it is asked, not at uvicorn's next look at `should_exit` (every 0.1 s:
        a service's stop waited for it)."""

        _asked: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)
            yield

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._wake()

        def stop_soon(self) -> None:
            """From any thread."""
            self.should_exit = True
            self._wake()

        def _wake(self) -> None:
            if self._asked is not None:
                loop, asked = self._asked
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(asked.set)

        async def main_loop(self) -> None:
            # uvicorn's tick has nothing else to do here: no date header to refresh, no
            # request limit, no notify callback.
            asked = asyncio.Event()
            self._asked = (asyncio.get_running_loop(), asked)
            if not await self.on_tick(0) and not self.should_exit:
                await asked.wait()

    server = Server(control_config(plane.app, max(args.log_level, logging.WARNING)))

    async def serve() -> None:
        assert server is not None
        loop = asyncio.get_running_loop()
        serving = loop.create_task(server.serve(sockets=[control_sock]))
        chores = [loop.create_task(job()) for job in plane.housekeeping]
        try:
            while not server.started:
                if serving.done():
                    serving.result()  # surfaces a start failure
                    return
                await asyncio.sleep(0.005)
            lower_every_thread(args.nice, settings.control.sched_idle)
            await bridge.acall("serving", os.getpid())
            await serving
        finally:
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
        plane.review_store.close()
        bridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
