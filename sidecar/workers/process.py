"""A worker: `python -m sidecar.workers.process`, started by the service's process.

It serves the data plane on the listening socket it inherits, with everything of
its own (loop, upstream pool, decision queue, background thread, explainer, sink
under `worker-K/`), and answers the control process on its bridge socket. It stops
on SIGTERM, and when its lifeline closes: the service's process is gone, however it
died, and no orphan keeps serving the port.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import socket
import sys
import threading

from sidecar.control.server import new_event_loop
from sidecar.service import Service
from sidecar.workers.slot import WorkerSlot

log = logging.getLogger("sidecar.workers")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sidecar.workers.process")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--proxy-fd", type=int, required=True)
    p.add_argument("--bridge-fd", type=int, required=True)
    p.add_argument("--lifeline-fd", type=int, required=True)
    p.add_argument("--grpc-fd", type=int, default=-1)
    p.add_argument("--control-url", required=True)
    p.add_argument("--log-level", type=int, default=30)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s [worker {args.index} %(process)d]: %(message)s",
    )
    settings = pickle.load(sys.stdin.buffer)
    lifeline = socket.socket(fileno=args.lifeline_fd)
    slot = WorkerSlot(
        index=args.index,
        count=args.count,
        proxy_sock=socket.socket(fileno=args.proxy_fd),
        bridge_sock=socket.socket(fileno=args.bridge_fd),
        control_url=args.control_url,
        grpc_sock=socket.socket(fileno=args.grpc_fd) if args.grpc_fd >= 0 else None,
    )
    service = Service(settings, slot)

    def lifeline_watch() -> None:
        service.started.wait()
        try:
            lifeline.sendall(b"S")
            while lifeline.recv(1):
                pass
        except OSError:
            pass
        log.info("the service's process is gone; worker %d stops", args.index)
        service.request_stop()

    threading.Thread(target=lifeline_watch, name="worker-lifeline", daemon=True).start()
    loop = new_event_loop()
    try:
        loop.run_until_complete(service.run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
