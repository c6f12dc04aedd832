"""Counters every sink keeps, under the names the dashboards use."""

from __future__ import annotations

from sidecar.metrics import Counter, Registry

KINDS = ("decision", "explanation", "review", "gap", "outcome")


class SinkStats:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.published = {
            k: registry.counter(
                "sidecar_events_published_total", "Events handed to the sink, by kind", {"kind": k}
            )
            for k in KINDS
        }
        self.acked = registry.counter(
            "sidecar_events_acked_total",
            "Events acknowledged by the broker (Kafka) or written (files)",
        )
        self._dropped: dict[str, Counter] = {}

    def dropped(self, reason: str) -> Counter:
        """The drop counter for `reason` (spool_full, sink_none, invalid, write_error, ...)."""
        c = self._dropped.get(reason)
        if c is None:
            c = self._dropped[reason] = self._registry.counter(
                "sidecar_events_dropped_total", "Events not kept, by reason", {"reason": reason}
            )
        return c
