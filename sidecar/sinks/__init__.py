"""Where events go: `build_sink` picks the sink that `sink.kind` names."""

from __future__ import annotations

from sidecar.config import Settings
from sidecar.metrics import Registry
from sidecar.sinks.base import EventKind, EventSink

__all__ = ["EventKind", "EventSink", "build_sink"]


def build_sink(settings: Settings, registry: Registry) -> EventSink:
    """files (default): rotated JSON Lines; kafka: spool + producer; none: discard, counted."""
    kind = settings.sink.kind
    if kind == "kafka":
        from sidecar.sinks.kafka import KafkaSink

        return KafkaSink(settings.kafka, settings.spool, registry)
    if kind == "none":
        from sidecar.sinks.null import NullSink

        return NullSink(registry)
    from sidecar.sinks.files import FileSink

    k = settings.kafka
    return FileSink(
        settings.sink.directory,
        {
            "decision": k.topic_decisions,
            "explanation": k.topic_explanations,
            "review": k.topic_reviews,
            "gap": k.topic_gaps,
            "outcome": k.topic_outcomes,
        },
        registry,
        rotate_bytes=settings.sink.rotate_bytes,
        rotate_interval_s=settings.sink.rotate_interval_s,
        keep_files=settings.sink.keep_files,
    )
