"""Decision ids are minted per forwarded call; the client's request id is recorded beside them."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from sidecar.decisions import client_request_id, new_call_id
from sidecar.service import Service
from tests.proxy.test_inference import V2_REQUEST, V2_RESPONSE, _answer, _post
from tests.servers import RecordingUpstream, http_get, jsonl_events, running_sidecar

TOKEN = "rita-token-0123456789ab"
AUTH = {"tokens": {TOKEN: {"name": "rita", "role": "reviewer"}}}
PATH = "/v2/models/credit/infer"


def test_call_ids_are_uuid7_unique_and_time_ordered() -> None:
    ids = [new_call_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:100]:
        u = uuid.UUID(value)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert u.hex == value
    # The first 48 bits are Unix milliseconds: never decreasing, so ids of different
    # milliseconds sort by time, as strings too.
    stamps = [int(v[:12], 16) for v in ids]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time_ns() // 1_000_000) < 60_000


def test_client_request_ids_are_recorded_only_when_printable_and_short() -> None:
    assert client_request_id("req-42") == "req-42"
    assert client_request_id("../etc/passwd") == "../etc/passwd"
    assert client_request_id("x" * 128) == "x" * 128
    assert client_request_id("x" * 129) is None
    assert client_request_id("has space") is None
    assert client_request_id("tab\there") is None
    assert client_request_id("") is None
    assert client_request_id(None) is None


def _events(svc: Service) -> list[dict[str, Any]]:
    events = jsonl_events(Path(svc.settings.sink.directory), recursive=True)
    return [body for body in events if body["event_type"] == "decision"]


def _by_request(svc: Service, query: str, token: str | None = TOKEN) -> tuple[int, Any]:
    status, body = http_get(f"{svc.control_url}/decisions?{query}", token)
    return status, orjson.loads(body)


def test_a_reused_request_id_gives_two_calls_two_decision_ids(
    upstream: RecordingUpstream,
) -> None:
    _answer(upstream, PATH, V2_RESPONSE)
    body = orjson.dumps(V2_REQUEST)
    with running_sidecar(upstream.url, auth=AUTH) as svc:
        first = _post(svc, PATH, body, {"x-request-id": "retry-1"})
        second = _post(svc, PATH, body, {"x-request-id": "retry-1"})
        assert first.body == second.body == V2_RESPONSE
        a, b = first.getheader("x-decision-id"), second.getheader("x-decision-id")
        assert a != b
        assert uuid.UUID(a).version == 7 and uuid.UUID(b).version == 7
        assert svc.pipeline.drain(5)
        for cid in (a, b):
            for row in (0, 1):
                d = svc.store.get(f"{cid}/{row}")
                assert d is not None
                assert (d.call_id, d.request_id, d.row) == (cid, "retry-1", row)

        status, page = _by_request(svc, "request_id=retry-1")
        assert status == 200
        assert [d["decision_id"] for d in page["decisions"]] == [
            f"{a}/0",
            f"{a}/1",
            f"{b}/0",
            f"{b}/1",
        ]
        assert {d["request_id"] for d in page["decisions"]} == {"retry-1"}
        assert page["decisions"][0]["call_id"] == a
        assert page["next_after"] is None

        # The lookup by id answers the minted one, and says which request it came from.
        status, one = http_get(f"{svc.control_url}/decisions/{b}/1", TOKEN)
        assert status == 200
        assert orjson.loads(one)["decision"]["request_id"] == "retry-1"

        events = _events(svc)
    assert len(events) == 4
    assert len({e["event_id"] for e in events}) == 4
    assert {e["decision_id"] for e in events} == {f"{c}/{r}" for c in (a, b) for r in (0, 1)}
    assert {(e["call_id"], e["request_id"]) for e in events} == {(a, "retry-1"), (b, "retry-1")}


def test_listing_by_request_id_pages_and_is_authenticated(upstream: RecordingUpstream) -> None:
    _answer(upstream, PATH, V2_RESPONSE)
    body = orjson.dumps(V2_REQUEST)
    with running_sidecar(upstream.url, auth=AUTH) as svc:
        ids = [
            _post(svc, PATH, body, {"x-request-id": "same-id"}).getheader("x-decision-id")
            for _ in range(3)
        ]
        assert svc.pipeline.drain(5)
        expected = [f"{c}/{r}" for c in ids for r in (0, 1)]
        got: list[str] = []
        after = None
        while True:
            q = "request_id=same-id&limit=4"
            if after:
                q += f"&after={quote(after)}"
            status, page = _by_request(svc, q)
            assert status == 200
            assert len(page["decisions"]) <= 4
            got += [d["decision_id"] for d in page["decisions"]]
            after = page["next_after"]
            if after is None:
                break
        assert got == expected

        assert _by_request(svc, "request_id=unknown")[1] == {"decisions": [], "next_after": None}
        assert _by_request(svc, "request_id=same", token=None)[0] == 401
        assert _by_request(svc, "request_id=same&limit=101")[0] == 422
        assert _by_request(svc, "request_id=" + "x" * 129)[0] == 422
        assert _by_request(svc, "")[0] == 422
        assert _by_request(svc, "request_id=same&typo=1")[0] == 422


def test_a_v2_body_id_is_the_request_id_without_the_header(upstream: RecordingUpstream) -> None:
    _answer(upstream, PATH, V2_RESPONSE)
    body = orjson.dumps({**V2_REQUEST, "id": "body-7"})
    with running_sidecar(upstream.url) as svc:
        plain = _post(svc, PATH, body).getheader("x-decision-id")
        header = _post(svc, PATH, body, {"x-request-id": "hdr-1"}).getheader("x-decision-id")
        # A header that cannot be recorded gives way to the body's id.
        bad = _post(svc, PATH, body, {"x-request-id": "no spaces allowed"}).getheader(
            "x-decision-id"
        )
        no_id = _post(svc, PATH, orjson.dumps({**V2_REQUEST, "id": 5})).getheader("x-decision-id")
        assert svc.pipeline.drain(5)
        got = {
            name: svc.store.get(f"{cid}/0")
            for name, cid in (("plain", plain), ("header", header), ("bad", bad), ("no", no_id))
        }
        assert len({plain, header, bad, no_id}) == 4
    assert {k: d.request_id for k, d in got.items() if d is not None} == {
        "plain": "body-7",
        "header": "hdr-1",
        "bad": "body-7",
        "no": None,
    }


@pytest.mark.parametrize("rid", ["../etc/passwd", "a:b.c-d_e"])
def test_printable_request_ids_are_kept_and_never_become_the_decision_id(
    upstream: RecordingUpstream, rid: str
) -> None:
    _answer(upstream, PATH, V2_RESPONSE)
    with running_sidecar(upstream.url) as svc:
        r = _post(svc, PATH, orjson.dumps(V2_REQUEST), {"x-request-id": rid})
        cid = r.getheader("x-decision-id")
        assert cid != rid and uuid.UUID(cid).version == 7
        assert svc.pipeline.drain(5)
        d = svc.store.get(cid)
        assert d is not None and d.request_id == rid
