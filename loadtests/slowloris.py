"""Hostile clients held open beside the benchmark load (bench_proxy `--slowloris N`).

While it runs: N slowloris connections (a request head that never ends: one more header
line every second) and N stalled bodies (a head with `Content-Length` and then no body)
are kept open against the data plane; one the sidecar closes (its 408 deadlines) is
opened again at once, so N of each are held for the whole round. The control plane's
`/healthz` is asked every second, and its answers counted: the hostile clients must not
slow the inference calls past the documented limits, nor reach the control plane.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit

SLOW_HEAD = b"GET /v2/models/m/ready HTTP/1.1\r\nhost: bench\r\n"
STALLED_BODY = b"POST /upload HTTP/1.1\r\nhost: bench\r\ncontent-length: 100000\r\n\r\n"


class HostileLoad:
    """Holds `count` slowloris connections and `count` stalled bodies between `start` and `stop`."""

    def __init__(self, proxy_url: str, control_url: str, count: int) -> None:
        p = urlsplit(proxy_url)
        assert p.hostname is not None and p.port is not None
        self._addr = (p.hostname, p.port)
        self._control = control_url.rstrip("/")
        self._count = count
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counts = {
            "slowloris_held": 0,
            "stalled_held": 0,
            "reopened": 0,
            "open_failed": 0,
            "refused_408": 0,
            "healthz_ok": 0,
            "healthz_failed": 0,
        }

    def _open(self, sel: selectors.BaseSelector, kind: str) -> None:
        try:
            s = socket.create_connection(self._addr, timeout=5)
            s.sendall(SLOW_HEAD if kind == "slow" else STALLED_BODY)
        except OSError:
            self.counts["open_failed"] += 1
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, kind)

    def _hold(self) -> None:
        sel = selectors.DefaultSelector()
        for kind in ("slow", "stalled"):
            for _ in range(self._count):
                self._open(sel, kind)
        self.counts["slowloris_held"] = sum(1 for k in sel.get_map().values() if k.data == "slow")
        self.counts["stalled_held"] = len(sel.get_map()) - self.counts["slowloris_held"]
        next_line = time.monotonic() + 1.0
        line = 0
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 408"):
                    self.counts["refused_408"] += 1
                sel.unregister(sock)
                sock.close()
                self.counts["reopened"] += 1
                self._open(sel, key.data)
            if time.monotonic() >= next_line:
                next_line += 1.0
                line += 1
                for key in list(sel.get_map().values()):
                    if key.data == "slow":
                        # Closed by the sidecar: the select above reopens it.
                        with contextlib.suppress(OSError):
                            key.fileobj.send(b"x-slow-%d: 1\r\n" % line)  # type: ignore[union-attr]
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()

    def _health(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self._control + "/healthz", timeout=5) as resp:
                    resp.read()
                self.counts["healthz_ok"] += 1
            except OSError:
                self.counts["healthz_failed"] += 1
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._hold), threading.Thread(target=self._health)]
        for t in self._threads:
            t.daemon = True
            t.start()
        # The connections are open before the round's load starts.
        deadline = time.monotonic() + 30
        while self.counts["stalled_held"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
