"""Real HTTP servers on 127.0.0.1 for tests: a recording upstream, and the sidecar itself."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from sidecar.config import load_settings
from sidecar.service import Service, ServiceThread

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path_qs: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class RecordingUpstream:
    """An aiohttp server in its own thread that records every request it receives."""

    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def route(self, path: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes[path] = fn
            return fn

        return deco

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self.routes.get(request.path) or self.routes.get("*")
        if handler is not None and getattr(handler, "streaming", False):
            self.seen.append(Seen(request.method, request.path_qs, list(request.raw_headers), b""))
            return await handler(request)
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, list(request.raw_headers), body))
        if handler is None:
            return web.Response(status=404, body=b"no route")
        request["body"] = body
        return await handler(request)


@contextlib.contextmanager
def recording_upstream(tls: ssl.SSLContext | None = None) -> Iterator[RecordingUpstream]:
    """A recording upstream on 127.0.0.1; with `tls`, an https:// one."""
    up = RecordingUpstream(scheme="https" if tls is not None else "http")
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        up.loop = loop
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", up._dispatch)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        loop.run_until_complete(site.start())
        up.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runner_box.append(runner)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield up
    finally:
        assert up.loop is not None
        up.loop.call_soon_threadsafe(up.loop.stop)
        t.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_sidecar(upstream_url: str, **sections: dict[str, Any]) -> Iterator[Service]:
    state = Path(tempfile.mkdtemp(prefix="sidecar-test-"))
    overrides: dict[str, dict[str, Any]] = {
        "proxy": {"port": 0, "upstream": upstream_url},
        "control": {"port": 0},
        # Everything the service writes goes to a fresh folder, never the checkout.
        "sink": {"directory": str(state / "events")},
        "review": {"db_path": str(state / "review.db")},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    settings = load_settings(environ={}, overrides=overrides)
    try:
        with ServiceThread(settings) as service:
            yield service
    finally:
        shutil.rmtree(state, ignore_errors=True)


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float = 10.0,
    what: str = "",
    interval_s: float = 0.01,
) -> None:
    """Poll a condition every `interval_s`; fail the test with `what` if it never holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(interval_s)


def jsonl_events(folder: Path, recursive: bool = False) -> list[dict[str, Any]]:
    """Every event in the `*.jsonl` files under `folder` (none when it is not there), in
    file order. Whole lines only: the files sink may be writing a file as it is read, and
    a torn last line is read whole on the next poll."""
    if not folder.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for f in sorted(folder.rglob("*.jsonl") if recursive else folder.glob("*.jsonl")):
        data = f.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        out.extend(orjson.loads(line) for line in whole.splitlines() if line.strip())
    return out


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def read_until(s: socket.socket, ending: bytes) -> bytes:
    """Read until what came ends with `ending` (a pass-through answer's head and body may
    come in separate segments), or the connection closes."""
    out = b""
    while not out.endswith(ending):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out
