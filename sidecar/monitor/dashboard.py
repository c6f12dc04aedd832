"""The monitor's dashboard on the control plane: `/monitor` (a page of SVG charts) and `/monitor/report.json`.

The figures come from the continuous monitor's latest report (`monitor.state_dir/report.json`)
when one is running; otherwise the page computes a report over the files sink's folder,
at most once per `monitor.interval_s`. The hub serves the same routes over another
`load`: the shards' states merged from its database (`sidecar.hub.monitor_dashboard`). The page has no script and loads nothing from
elsewhere: the charts are drawn on the server. Per-group figures show group attributes,
so the routes take the roles that see them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response

from sidecar.config import Settings
from sidecar.monitor import render

log = logging.getLogger("sidecar.monitor.dashboard")
NO_CACHE = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
PAGE_HEADERS = {
    **NO_CACHE,
    "content-security-policy": (
        f"default-src 'none'; style-src '{render.STYLE_HASH}'; img-src 'self' data:;"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class LatestReport:
    """The report the dashboard shows, computed or read at most once per interval."""

    def __init__(
        self, settings: Settings, load: Callable[[], dict[str, Any] | None] | None = None
    ) -> None:
        self._settings = settings
        self._loader = load or self._load
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._report: dict[str, Any] | None = None
        self.error: str | None = None

    def get(self) -> dict[str, Any] | None:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self._settings.monitor.interval_s:
                try:
                    self._report, self.error = self._loader(), None
                except (OSError, ValueError) as exc:  # a bad reference file, a torn state file
                    log.warning("monitor dashboard: %s", exc)
                    self._report, self.error = None, str(exc)
                self._at = now
            return self._report

    def _load(self) -> dict[str, Any] | None:
        m = self._settings.monitor
        written = m.state_dir / "report.json"
        if written.is_file():
            body: dict[str, Any] = orjson.loads(written.read_bytes())
            return body
        folder = Path(m.source) if m.source else self._settings.sink.directory
        if not folder.is_dir():
            return None
        from sidecar.monitor.runner import report_once

        return report_once(self._settings, folder)


def create_dashboard_router(
    settings: Settings,
    guard: Callable[..., Any],
    load: Callable[[], dict[str, Any] | None] | None = None,
) -> APIRouter:
    """`/monitor` and `/monitor/report.json`; `load` gives the report (default: the control
    plane's, from `state_dir/report.json` or the files sink's folder)."""
    router = APIRouter(dependencies=[Depends(guard)], tags=["monitor"])
    latest = LatestReport(settings, load)

    @router.get("/monitor", include_in_schema=False)
    def dashboard() -> Response:
        rep = latest.get()
        if rep is None or not rep["windows"]:
            body = (
                "<!doctype html><html lang=en><head><meta charset=utf-8><title>Monitor</title>"
                "</head><body><h1>Monitor</h1><p id=empty>"
                + (
                    f"The figures cannot be computed: {escape(latest.error)}"
                    if latest.error
                    else "No decisions in the stream yet."
                )
                + "</p></body></html>"
            )
        else:
            body = render.html(rep, title="Monitor")
        return HTMLResponse(body, headers=PAGE_HEADERS)

    @router.get("/monitor/report.json")
    def report_json() -> Response:
        """The latest report (the JSON contract of `sidecar monitor report`)."""
        rep = latest.get()
        if rep is None:
            return JSONResponse({"detail": "no events to report on"}, status_code=404)
        return Response(orjson.dumps(rep), media_type="application/json", headers=NO_CACHE)

    return router
