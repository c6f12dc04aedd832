"""The held answer carried to the hub in a review-requested event (hold mode with review.store = hub)."""

from __future__ import annotations

from typing import Any, cast

import jsonschema
import pytest

from sidecar.metrics import Registry
from sidecar.review.forward import HubForwardingStore
from sidecar.review.held import held_answer, held_field
from sidecar.review.model import HeldAnswer
from sidecar.sinks.base import EventKind, EventSink
from tests.eventlib import make_decision, validate_event

HEADERS = [(b"content-type", b"application/octet-stream"), (b"x-model", b"caf\xe9")]


def test_a_binary_answer_round_trips_through_the_field() -> None:
    body = bytes(range(256)) * 3
    field = held_field(200, HEADERS, body, max_bytes=len(body))
    assert field["body_bytes"] == len(body) and field["omitted"] is None
    assert held_answer(field) == HeldAnswer(
        200, [("content-type", "application/octet-stream"), ("x-model", "café")], body
    )


def test_past_the_limit_the_body_stays_behind_and_the_field_says_why() -> None:
    body = b"x" * 101
    field = held_field(200, HEADERS, body, max_bytes=100)
    assert field["body_base64"] is None
    assert "101 bytes" in field["omitted"] and "review.held_max_bytes (100)" in field["omitted"]
    held = held_answer(field)
    assert held is not None and held.body == b"" and held.omitted == field["omitted"]
    # At the limit it travels.
    assert held_field(200, HEADERS, body[:100], max_bytes=100)["body_base64"] is not None


@pytest.mark.parametrize(
    "broken",
    [
        None,
        [],
        {"status": "200", "headers": [], "body_base64": ""},
        {"status": 99, "headers": [], "body_base64": ""},
        {"status": True, "headers": [], "body_base64": ""},
        {"status": 200, "headers": [["a"]], "body_base64": ""},
        {"status": 200, "headers": [], "body_base64": "not base64!"},
        {"status": 200, "headers": [], "body_base64": None, "omitted": None},
    ],
)
def test_a_malformed_field_is_no_held_answer(broken: Any) -> None:
    assert held_answer(broken) is None


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        self.published.append((kind, key, body))
        return True


def test_the_forwarding_store_sends_the_held_answer_in_a_valid_review_event() -> None:
    sink = Recorder()
    store = HubForwardingStore(sink=cast(EventSink, sink), registry=Registry(), held_max_bytes=1024)
    d = make_decision()
    store.enqueue(d, None, b'{"outputs": []}', [(b"content-type", b"application/json")], 200)
    store.enqueue(d, None, b"y" * 2000, [], 200)
    (_, key, small), (_, _, large) = sink.published
    assert key == d.decision_id and small["action"] == "requested"
    assert small["audit_hash"] is None
    held = held_answer(small["held"])
    assert held is not None and held.body_json() == {"outputs": []}
    assert large["held"]["body_base64"] is None and large["held"]["omitted"]
    for body in (small, large):
        validate_event(body)
    small["held"]["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_event(small)
