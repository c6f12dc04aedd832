"""`proxy.workers = 2` with the Kafka sink: a producer and a spool folder per worker."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sidecar.decisions import worker_of
from sidecar.sinks.spool_format import scan
from tests.eventlib import validate_event
from tests.kafka.test_through_proxy import FEATURES, Sidecar, request_body, v2_model
from tests.kafka_broker import KafkaBroker, free_port
from tests.servers import RecordingUpstream, recording_upstream


@pytest.fixture
def model_server() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        up.routes["/v2/models/credit/infer"] = v2_model
        yield up


def test_both_workers_stream_their_decisions_through_their_own_spools(
    tmp_path: Path,
    kafka_broker: KafkaBroker,
    kafka_topics: dict[str, str],
    model_server: RecordingUpstream,
) -> None:
    proxy_port, control_port = free_port(), free_port()
    topics = "\n".join(f'{k} = "{v}"' for k, v in kafka_topics.items())
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f"""
[proxy]
port = {proxy_port}
upstream = "{model_server.url}"
workers = 2
[control]
port = {control_port}
[model]
feature_names = {orjson.dumps(FEATURES).decode()}
[sink]
kind = "kafka"
[kafka]
bootstrap_servers = "{kafka_broker.bootstrap}"
retry_backoff_ms = 100
{topics}
[spool]
directory = "{tmp_path / "spool"}"
[review]
db_path = "{tmp_path / "review.db"}"
"""
    )
    sidecar = Sidecar(config, proxy_port, control_port)
    sidecar.start()
    try:
        n = 80
        calls = {}
        for i in range(n):
            # A connection per call: the kernel spreads them over both workers' sockets.
            conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
            conn.request(
                "POST",
                "/v2/models/credit/infer",
                body=request_body(i),
                headers={"content-type": "application/json", "x-request-id": f"w-{i:03d}"},
            )
            r = conn.getresponse()
            r.read()
            conn.close()
            assert r.status == 200
            calls[r.getheader("x-decision-id")] = i
        assert {worker_of(c) for c in calls} == {0, 1}
        got = kafka_broker.consume(kafka_topics["topic_decisions"], n)
        events = {(b := orjson.loads(r.value))["event_id"]: b for r in got}
        assert len(events) == n
        for body in events.values():
            validate_event(body)
            assert body["request_id"] == f"w-{calls[body['call_id']]:03d}"
        # Each worker's events went through its own spool, and only its own.
        spool = tmp_path / "spool"
        assert sorted(p.name for p in spool.iterdir()) == ["worker-0", "worker-1"]
        for k in (0, 1):
            keys = {rec.key for rec in scan(spool / f"worker-{k}") if rec.kind == "decision"}
            assert keys and {worker_of(key) for key in keys} == {k}
        # The control port's page sums both workers' sinks.
        assert sidecar.metric('sidecar_events_published_total{kind="decision"}') == n
    finally:
        sidecar.stop()
