"""The restart policy both supervisors keep (the control process's and the workers'):
a child that dies is started again, up to `MAX_RESTARTS` times within
`RESTART_WINDOW_S`; past that the service stops, since a child that keeps dying
will not serve however often it is started."""

from __future__ import annotations

import time

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


class RestartBudget:
    """The restarts one child has had within the window."""

    def __init__(self) -> None:
        self._times: list[float] = []

    def __len__(self) -> int:
        return len(self._times)

    def spend(self) -> str | None:
        """Count a restart now, or say why there is none left (the budget is then unchanged)."""
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < RESTART_WINDOW_S]
        if len(self._times) >= MAX_RESTARTS:
            return f"{MAX_RESTARTS} times within {RESTART_WINDOW_S:.0f} s"
        self._times.append(now)
        return None
