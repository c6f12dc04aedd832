"""Hold mode through the hub, end to end: a real broker, a real PostgreSQL, a hub, a sidecar.

The sidecar (review.mode = "hold", review.store = "hub") answers a routed call
with 202 and a ticket whose status_url is the hub's; the held answer travels
in the review-requested event; at the hub a reviewer claims and decides, and
the status URL shows the verdict and, once approved, the model's answer
(not carried past review.held_max_bytes: the verdict only, saying so).
"""

from __future__ import annotations

import http.client
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from sidecar.config import ConfigError, load_settings
from sidecar.service import Service
from tests.hub.hubkit import ALICE, AUDITOR, TOKENS, bearer, hub_process
from tests.kafka.test_through_proxy import FEATURES, request_body, v2_model
from tests.kafka_broker import KafkaBroker
from tests.postgres_server import PostgresServer
from tests.servers import recording_upstream, running_sidecar, wait_until

HELD_MAX = 600


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


async def big_model(request: web.Request) -> web.Response:
    """The demo classifier's answer with a long parameter: past review.held_max_bytes."""
    answer = await v2_model(request)
    assert isinstance(answer.body, bytes)
    body = orjson.loads(answer.body)
    body["parameters"] = {"note": "x" * (2 * HELD_MAX)}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _call(svc: Service, model: str, i: int) -> tuple[int, dict[str, str], bytes]:
    host, port = svc.proxy_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "POST",
            f"/v2/models/{model}/infer",
            body=request_body(i),
            headers={"content-type": "application/json", "x-review": "1"},
        )
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _status(client: httpx.Client, url: str) -> dict[str, Any] | None:
    r = client.get(url)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_held_call_is_reviewed_at_the_hub_and_its_status_url_there_shows_the_answer(
    kafka_broker: KafkaBroker, kafka_topics: dict[str, str], database: str, tmp_path: Path
) -> None:
    topics = dict(kafka_topics)
    with (
        hub_process(database, kafka_broker.bootstrap, topics, f"g{uuid.uuid4().hex[:8]}") as (
            _,
            hub,
        ),
        recording_upstream() as up,
    ):
        direct: dict[str, bytes] = {}
        up.routes["/v2/models/credit/infer"] = v2_model
        up.routes["/v2/models/big/infer"] = big_model
        with running_sidecar(
            up.url,
            model={"feature_names": FEATURES},
            sink={"kind": "kafka"},
            kafka={"bootstrap_servers": kafka_broker.bootstrap, "linger_ms": 5, **topics},
            spool={"directory": str(tmp_path / "spool"), "fsync": "never"},
            review={
                "store": "hub",
                "mode": "hold",
                "hub_url": hub,
                "held_max_bytes": HELD_MAX,
                "confidence_below": None,
            },
            auth={"tokens": TOKENS},
        ) as svc:
            tickets: dict[str, dict[str, Any]] = {}
            for model, i in (("credit", 1), ("credit", 2), ("big", 3)):
                status, headers, body = _call(svc, model, i)
                assert status == 202 and headers["x-review-status"] == "held"
                tickets[f"{model}{i}"] = orjson.loads(body)
            # What the model answered, as the client would have had it without review.
            for key, i, model in (("credit1", 1, "credit"), ("big3", 3, "big")):
                r = httpx.post(
                    f"{up.url}/v2/models/{model}/infer",
                    content=request_body(i),
                    headers={"content-type": "application/json"},
                )
                direct[key] = r.content

        with httpx.Client(headers=bearer(ALICE), timeout=10) as client:
            for ticket in tickets.values():
                # The client is sent to the hub, not to the sidecar that held the answer.
                assert ticket["status_url"] == f"{hub}/review/items/{ticket['review_ticket']}"
            for t in tickets.values():
                wait_until(
                    lambda t=t: _status(client, t["status_url"]) is not None,
                    timeout_s=30,
                    what="the held item at the hub",
                )
            for t in tickets.values():
                item = _status(client, t["status_url"])
                assert item is not None
                assert (item["mode"], item["status"]) == ("held", "pending")
                assert item["final"] == {
                    "state": "held",
                    "outcome": None,
                    "status_code": None,
                    "response": None,
                }

            def decide(key: str, decision: dict[str, Any]) -> dict[str, Any]:
                item = tickets[key]["review_ticket"]
                assert client.post(f"{hub}/review/items/{item}/claim").status_code == 200
                done = client.post(f"{hub}/review/items/{item}/decision", json=decision)
                assert done.status_code == 200, done.text
                after = _status(client, tickets[key]["status_url"])
                assert after is not None
                return after

            approved = decide("credit1", {"action": "approve", "reason": "fine"})["final"]
            assert approved["state"] == "approved" and approved["status_code"] == 200
            # The model's answer, as the model server gave it, now shown at the hub.
            assert approved["response"] == orjson.loads(direct["credit1"])
            assert "response_omitted" not in approved

            overridden = decide(
                "credit2", {"action": "override", "outcome": "0", "reason": "income verified"}
            )["final"]
            assert (overridden["state"], overridden["outcome"]) == ("overridden", "0")
            assert overridden["response"] is None

            # Past review.held_max_bytes the answer did not travel: the verdict, and why not.
            big = decide("big3", {"action": "approve", "reason": "fine"})["final"]
            assert big["state"] == "approved" and big["response"] is None
            assert str(len(direct["big3"])) in big["response_omitted"]
            assert "review.held_max_bytes" in big["response_omitted"]

            # The audit chain records the items as held, and verifies.
            history = client.get(
                f"{hub}/review/items/{tickets['credit1']['review_ticket']}/history"
            ).json()
            assert history["records"][0]["data"] == {"reason": "requested", "mode": "held"}
            verdict = httpx.get(f"{hub}/review/audit/verify", headers=bearer(AUDITOR)).json()
            assert verdict["ok"], verdict


def test_hold_mode_with_the_hub_store_needs_the_hubs_url_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"review\.hub_url"):
        load_settings(environ={}, overrides={"review": {"store": "hub", "mode": "hold"}})
    with pytest.raises(ConfigError, match=r"hub_url"):
        load_settings(
            environ={},
            overrides={"review": {"store": "hub", "mode": "hold", "hub_url": "not a url"}},
        )
    settings = load_settings(
        environ={},
        overrides={"review": {"store": "hub", "mode": "hold", "hub_url": "https://hub.example"}},
    )
    assert settings.review.held_max_bytes == 256 * 1024
    with pytest.raises(ConfigError, match=r"held_max_bytes"):
        load_settings(environ={}, overrides={"review": {"held_max_bytes": 5 * 1024 * 1024}})
