"""The monitor's dashboard at the hub: `/monitor` and `/monitor/report.json` over the fleet.

The figures are every shard's state that the monitors (`monitor.state_store =
"database"`, group `monitor.group_id`) keep in the hub's database, merged as
the monitors' instance 0 merges them, with the hub's own `[monitor]` and
`[model]` settings (give the hub the monitors' config file): the page shows the
same report wherever it is served, and needs no shared volume.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi import APIRouter
from psycopg_pool import ConnectionPool

from sidecar.config import Settings
from sidecar.hub import monitor_state
from sidecar.hub.db import Conn
from sidecar.monitor.dashboard import create_dashboard_router
from sidecar.monitor.drift import Reference
from sidecar.monitor.merge import merged_report
from sidecar.monitor.runner import reference


class MergedReport:
    """Loads the report from the database (the dashboard calls it at most once per interval)."""

    def __init__(self, settings: Settings, pool: ConnectionPool[Conn]) -> None:
        self._settings = settings
        self._pool = pool
        self._lock = threading.Lock()
        self._ref: tuple[Reference | None] | None = None

    def _reference(self) -> Reference | None:
        # Read once: the bins are fixed for the monitors' whole life too.
        with self._lock:
            if self._ref is None:
                self._ref = (reference(self._settings),)
            return self._ref[0]

    def __call__(self) -> dict[str, Any] | None:
        ref = self._reference()
        try:
            with self._pool.connection() as conn:
                rows = monitor_state.states(conn, self._settings.monitor.group_id)
        except psycopg.Error as exc:
            raise ValueError(f"the hub's database did not answer: {exc}") from None
        return merged_report(self._settings, ref, rows)


def create_hub_monitor_router(
    settings: Settings, pool: ConnectionPool[Conn], guard: Callable[..., Any]
) -> APIRouter:
    return create_dashboard_router(settings, guard, load=MergedReport(settings, pool))
