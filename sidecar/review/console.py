"""The reviewer console: static files shipped in the package, no build step.

The page keeps the bearer token in sessionStorage and sends it in the
Authorization header from script; nothing is authenticated by cookie, so a
forged cross-site request carries no credentials (CSRF does not apply).
A strict Content-Security-Policy allows only our own scripts and styles, and
the page writes untrusted values with textContent, never as HTML.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

_STATIC = resources.files("sidecar.review") / "static"
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _serve(name: str) -> Response:
    body = (_STATIC / name).read_bytes()
    return Response(body, media_type=_FILES[name], headers=SECURITY_HEADERS)


def add_routes(router: APIRouter) -> None:
    """`/` and `/console/{file}`: the page and its two assets."""

    @router.get("/", include_in_schema=False)
    def index() -> Response:
        return _serve("index.html")

    @router.get("/console/", include_in_schema=False)
    def index_alias() -> Response:
        return _serve("index.html")

    @router.get("/console/console.js", include_in_schema=False)
    def script() -> Response:
        return _serve("console.js")

    @router.get("/console/console.css", include_in_schema=False)
    def style() -> Response:
        return _serve("console.css")
