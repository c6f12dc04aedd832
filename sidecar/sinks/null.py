"""sink.kind = "none": events are discarded on purpose, and counted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.metrics import Registry
from sidecar.sinks.base import EventKind
from sidecar.sinks.gaps import GapLedger
from sidecar.sinks.stats import SinkStats


class NullSink:
    """Discards every event; `sidecar_events_dropped_total{reason="sink_none"}` says how many."""

    def __init__(self, registry: Registry) -> None:
        self._stats = SinkStats(registry)
        self._dropped = self._stats.dropped("sink_none")
        # Discarding on purpose is not a loss to account for; the queue's sheds still are.
        self.gaps = GapLedger(registry)

    def start(self) -> None:
        self.gaps.start(lambda key, body: self.publish("gap", key, body))

    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        return self.publish_many(kind, ((key, body),)) == 1

    def publish_many(self, kind: EventKind, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        self._stats.published[kind].inc(len(items))
        self._dropped.inc(len(items))
        return len(items)

    def ready(self) -> bool:
        return True

    def has_room(self, pending: int = 0) -> bool:
        return True

    def health(self) -> dict[str, bool]:
        return {"gap_records": self.gaps.alive()}

    def refuse_new(self) -> None:
        pass  # nothing here waits

    def close(self, timeout_s: float = 5.0) -> None:
        self.gaps.close()
