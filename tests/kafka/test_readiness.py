"""What an operator sees when a part of the Kafka sink dies: /readyz names it, /metrics shows it.

No broker is needed: the sink spools while the bootstrap server is unreachable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.service import Service
from sidecar.sinks.kafka import KafkaSink
from tests.kafka_broker import dead_bootstrap
from tests.servers import http_get, recording_upstream, running_sidecar, wait_until


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with (
        recording_upstream() as up,
        running_sidecar(
            up.url,
            sink={"kind": "kafka"},
            kafka={"bootstrap_servers": dead_bootstrap(), "retry_backoff_ms": 50},
            spool={"directory": str(tmp_path / "spool"), "fsync": "interval"},
        ) as svc,
    ):
        yield svc


def readyz(svc: Service) -> tuple[int, dict[str, Any]]:
    status, body = http_get(svc.control_url + "/readyz")
    return status, orjson.loads(body)


def metric_line(svc: Service, prefix: str) -> str:
    _, body = http_get(svc.control_url + "/metrics")
    return next(line for line in body.decode().splitlines() if line.startswith(prefix))


def test_ready_with_the_broker_down_and_every_check_named(service: Service) -> None:
    status, body = readyz(service)
    assert status == 200, body
    assert {
        "kafka_delivery",
        "spool_fsync",
        "spool_disk",
        "gap_records",
        "decision_pipeline",
    } <= set(body["checks"])
    assert metric_line(service, "sidecar_producer_connected ").endswith(" 0.0")


def test_a_dead_delivery_thread_makes_the_sidecar_unready(service: Service) -> None:
    sink = service.sink
    assert isinstance(sink, KafkaSink)

    def broken(*_: object) -> list[Any]:
        raise RuntimeError("injected: the delivery thread dies")

    sink.spool.read = broken  # type: ignore[method-assign]
    sink.delivery._connect = lambda: True  # type: ignore[method-assign]
    wait_until(lambda: not sink.delivery.alive(), what="the delivery thread to die")
    status, body = readyz(service)
    assert status == 503 and body["checks"]["kafka_delivery"] is False
    assert metric_line(service, 'sidecar_thread_alive{thread="kafka-delivery"}').endswith(" 0.0")


def test_a_dead_fsync_thread_makes_the_sidecar_unready(service: Service) -> None:
    sink = service.sink
    assert isinstance(sink, KafkaSink)

    def broken() -> None:
        raise RuntimeError("injected: the fsync thread dies")

    sink.spool._flush_once = broken  # type: ignore[method-assign]
    wait_until(lambda: not sink.spool.fsync_alive(), what="the fsync thread to die")
    status, body = readyz(service)
    assert status == 503 and body["checks"]["spool_fsync"] is False


def test_a_spool_disk_error_makes_the_sidecar_unready_until_a_write_succeeds(
    service: Service,
) -> None:
    sink = service.sink
    assert isinstance(sink, KafkaSink)
    sink.spool.disk_error = "append: [Errno 5] Input/output error"
    status, body = readyz(service)
    assert status == 503 and body["checks"]["spool_disk"] is False
    body_ = {"event_id": "e1", "time": "2026-11-23T10:00:00.000000Z"}
    assert sink.publish("decision", "r/0", body_)
    deadline = time.monotonic() + 5
    while readyz(service)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
