"""sink.kind = "none": events are discarded on purpose, and counted."""

from __future__ import annotations

from typing import Any

from sidecar.metrics import Registry
from sidecar.sinks.base import EventKind
from sidecar.sinks.stats import SinkStats


class NullSink:
    """Discards every event; `sidecar_events_dropped_total{reason="sink_none"}` says how many."""

    def __init__(self, registry: Registry) -> None:
        self._stats = SinkStats(registry)
        self._dropped = self._stats.dropped("sink_none")

    def start(self) -> None:
        pass

    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        self._stats.published[kind].inc()
        self._dropped.inc()
        return True

    def ready(self) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        pass
