"""Nothing the control plane serves loads anything from the internet, and its HTML has a CSP."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator, Sequence

from aiohttp import web
from fastapi import FastAPI
from starlette.routing import BaseRoute

from sidecar.config import Settings
from sidecar.control.bridge import BridgeClient
from sidecar.control.plane import Hello, build_control_plane
from tests.servers import RecordingUpstream, http_get, recording_upstream, running_sidecar

V2 = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'
V2_OUT = b'{"outputs":[{"name":"probabilities","shape":[1,2],"datatype":"FP32","data":[0.4,0.6]}]}'
TOKEN = "admin-token-for-the-page-test"
# An asset reference to another origin: src/href attributes, CSS url(), script imports.
REMOTE = re.compile(
    rb"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|"""
    rb"""import[^;\n]*["'](?:https?:)?//""",
    re.IGNORECASE,
)


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, those of included routers too (FastAPI wraps them; they carry no prefix here)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def _control_app(settings: Settings) -> FastAPI:
    """The app the control process serves, built here to list its routes (never served)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        hello = Hello(proxy_url="", control_url="", ready_checks=[], started=0.0)
        plane = build_control_plane(settings, BridgeClient(ours), hello)
        plane.review_store.close()
        return plane.app


def _upstream(up: RecordingUpstream) -> None:
    @up.route("/v2/models/m/infer")
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=V2_OUT, content_type="application/json")


def test_no_page_references_a_remote_asset_and_html_carries_a_csp() -> None:
    with (
        recording_upstream() as up,
        running_sidecar(up.url, auth={"tokens": {TOKEN: {"name": "ada", "role": "admin"}}}) as svc,
    ):
        _upstream(up)
        req = urllib.request.Request(svc.proxy_url + "/v2/models/m/infer", data=V2, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            decision = r.headers["x-decision-id"]
        # Every GET route the app has (the control process builds it from the same
        # settings), path parameters filled with the decision made above.
        paths = {
            re.sub(r"\{[^}]+\}", decision, route.path)
            for route in _routes(_control_app(svc.settings).routes)
            if "GET" in (getattr(route, "methods", None) or ())
        }
        assert "/" in paths and "/openapi.json" in paths
        pages = {path: _get(svc.control_url + path) for path in sorted(paths)}
        docs = http_get(svc.control_url + "/docs")[0], http_get(svc.control_url + "/redoc")[0]
    assert docs == (404, 404)
    html = [
        p for p, (_, h, _) in pages.items() if h.get("content-type", "").startswith("text/html")
    ]
    assert "/" in html, pages.keys()
    for path, (_, headers, body) in pages.items():
        assert not REMOTE.search(body), (path, REMOTE.search(body))
        if path in html:
            assert "content-security-policy" in headers, path
            assert "http" not in headers["content-security-policy"], path
    # Pages whose answers were HTML or assets came back: the scan above looked at something.
    assert all(pages[p][0] == 200 for p in ("/", "/openapi.json"))


def test_an_html_answer_without_its_own_policy_gets_the_default() -> None:
    import asyncio

    from fastapi.responses import HTMLResponse

    from sidecar.control.app import DEFAULT_CSP, create_control_app
    from sidecar.metrics import Registry

    app = create_control_app(registry=Registry(), ready_checks=[])

    @app.get("/page")
    def page() -> HTMLResponse:
        return HTMLResponse("<p>hi</p>")

    sent: list[dict[str, object]] = []

    async def run() -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/page",
            "raw_path": b"/page",
            "query_string": b"",
            "headers": [],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("t", 80),
            "root_path": "",
        }

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        await app(scope, receive, send)  # type: ignore[arg-type]

    asyncio.run(run())
    start = sent[0]
    assert start["status"] == 200
    assert (b"content-security-policy", DEFAULT_CSP) in start["headers"]  # type: ignore[operator]
