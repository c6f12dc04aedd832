"""spool.on_full = "block": a held answer's ticket is readable while the stages wait for room.

No broker is needed: with the bootstrap server unreachable the spool fills, the publish
stage waits, and decisions queue up behind it.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sidecar.service import Service
from sidecar.sinks.kafka import KafkaSink
from tests.kafka.test_through_proxy import FEATURES, request_body, v2_model
from tests.kafka_broker import dead_bootstrap
from tests.servers import http_get, recording_upstream, running_sidecar, wait_until

TOKEN = "reviewer-token-for-tests"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with recording_upstream() as up:
        up.routes["/v2/models/credit/infer"] = v2_model
        with running_sidecar(
            up.url,
            model={"feature_names": FEATURES},
            sink={"kind": "kafka"},
            kafka={"bootstrap_servers": dead_bootstrap(), "retry_backoff_ms": 50},
            spool={
                "directory": str(tmp_path / "spool"),
                "max_bytes": 256 * 1024,
                "segment_bytes": 16 * 1024,
                "on_full": "block",
                "fsync": "never",
            },
            review={"mode": "hold", "confidence_below": None},
            auth={"tokens": {TOKEN: {"name": "rev", "role": "reviewer"}}},
        ) as svc:
            yield svc


def call(conn: http.client.HTTPConnection, i: int, review: bool) -> tuple[int, bytes]:
    headers = {"content-type": "application/json", "x-request-id": f"h{i:05d}"}
    if review:
        headers["x-review"] = "1"
    conn.request("POST", "/v2/models/credit/infer", body=request_body(i), headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def test_held_tickets_answer_while_the_publish_stage_waits_for_room(service: Service) -> None:
    sink = service.sink
    assert isinstance(sink, KafkaSink)
    host, port = service.proxy_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    i = 0
    while sink.spool.waiting == 0:  # fill the spool until the publish stage blocks
        assert call(conn, i, review=False)[0] == 200
        i += 1
        assert i < 5000, "the spool never filled"
    tickets = []
    for j in range(i, i + 30):
        status, body = call(conn, j, review=True)
        assert status == 202
        tickets.append(orjson.loads(body)["status_url"])
    assert sink.spool.waiting == 1  # the stages still wait: nothing was published meanwhile
    for url in tickets:
        wait_until(lambda u=url: http_get(u, TOKEN)[0] == 200, 10, f"ticket {url}")  # type: ignore[misc]
    assert http_get(tickets[-1], TOKEN)[0] == 200
