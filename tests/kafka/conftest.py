from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Settings, load_settings
from sidecar.metrics import Registry
from sidecar.sinks.kafka import KafkaSink

# The broker plugin and the event helpers live beside the top-level tests.
from tests.kafka_broker import KafkaBroker, kafka_broker, kafka_topics  # noqa: F401


def kafka_settings(
    spool_dir: Path, bootstrap: str, topics: dict[str, str], **spool: Any
) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "sink": {"kind": "kafka"},
            "kafka": {
                "bootstrap_servers": bootstrap,
                "retry_backoff_ms": 100,
                "linger_ms": 2,
                **topics,
            },
            "spool": {"directory": str(spool_dir), "fsync": "never", **spool},
        },
    )


@pytest.fixture
def make_sink() -> Iterator[Any]:
    """Build (and at the end close) KafkaSinks: make_sink(settings) -> (sink, registry)."""
    sinks: list[KafkaSink] = []

    def make(settings: Settings) -> tuple[KafkaSink, Registry]:
        reg = Registry()
        sink = KafkaSink(settings.kafka, settings.spool, reg)
        sinks.append(sink)
        sink.start()
        return sink, reg

    yield make
    for s in sinks:
        s.close(2.0)
