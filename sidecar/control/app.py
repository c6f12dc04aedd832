"""The control plane: health, readiness, metrics, and the routers other parts contribute.

Nothing it serves loads anything from the internet: FastAPI's /docs and /redoc
pages pull their scripts from a public CDN, so they are off (the schema stays at
/openapi.json, for any OpenAPI viewer), and every HTML answer carries a
Content-Security-Policy (its own, or `DEFAULT_CSP`) that allows the page's own
origin only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar import __version__
from sidecar.control.metrics_view import MergedMetrics
from sidecar.metrics import Registry

ReadyCheck = tuple[str, Callable[[], Awaitable[bool]]]

DEFAULT_CSP = (
    b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none';"
    b" form-action 'none'; frame-ancestors 'none'"
)


class HtmlPolicy:
    """ASGI middleware: an HTML answer without a Content-Security-Policy gets `DEFAULT_CSP`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                html = any(
                    name.lower() == b"content-type" and value.startswith(b"text/html")
                    for name, value in headers
                )
                if html and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", DEFAULT_CSP))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)


def create_control_app(
    *,
    registry: Registry,
    ready_checks: Sequence[ReadyCheck],
    routers: Sequence[APIRouter] = (),
    guard: Callable[..., Any] | None = None,
    open_health: bool = True,
    open_metrics: bool = True,
    exposition: MergedMetrics | None = None,
) -> FastAPI:
    """Build the control plane app. `guard` is the auth dependency used when health or metrics are closed.

    `/metrics` shows `exposition` when given (the control process: both processes'
    metrics, each family written again only when it changed), else `registry`'s
    collectors."""
    app = FastAPI(
        title="sidecar control plane",
        version=__version__,
        description="Decision lookup, human review, metrics and health of the explaining sidecar.",
        # Swagger UI and ReDoc load their scripts from a public CDN: off.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(HtmlPolicy)
    collectors: CollectorRegistry = registry.collectors
    health_deps = [] if open_health or guard is None else [Depends(guard)]
    metrics_deps = [] if open_metrics or guard is None else [Depends(guard)]

    @app.get("/healthz", dependencies=health_deps, tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up and serving."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        dependencies=health_deps,
        tags=["health"],
        responses={503: {"description": "A dependency is not ready"}},
    )
    async def readyz() -> JSONResponse:
        """Ready when every check passes (the upstream is reachable, the sink accepts events)."""
        results = await asyncio.gather(*(check() for _, check in ready_checks))
        checks = {name: ok for (name, _), ok in zip(ready_checks, results, strict=True)}
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get(
        "/metrics", dependencies=metrics_deps, tags=["health"], response_class=PlainTextResponse
    )
    async def metrics(request: Request) -> Response:
        """Prometheus text format, or OpenMetrics when the scraper asks for it."""
        # prometheus_client's own negotiation, as its ASGI app does: no Accept gets text 0.0.4.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encode(collectors) if exposition is None else exposition.text(encode)
        return Response(body, media_type=content_type)

    for router in routers:
        app.include_router(router)
    return app
