"""Hostile inference bodies: parse failures, counted, answered with the upstream's bytes.

A tensor that declares millions of rows it does not carry, data nested past any
tensor's rank, binary data that lies about its size: none may cost the proxy more
than reading the body, nor lose the upstream's answer.
"""

from __future__ import annotations

import tracemalloc

import orjson
import pytest
from aiohttp import web

from sidecar.dataplane.protocols import ParseError, v2
from sidecar.dataplane.protocols.base import MAX_NESTING, check_nesting
from sidecar.service import Service
from tests.proxy.test_inference import V2_RESPONSE, _post
from tests.servers import RecordingUpstream, running_sidecar

PATH = "/v2/models/credit/infer"
UPSTREAM_ANSWER = b'{"upstream":"said this","outputs":[]}'


def _nested(depth: int) -> bytes:
    """JSON data nested `depth` lists deep (orjson will not write past 254)."""
    return b"[" * depth + b"1.0" + b"]" * depth


def _failures(svc: Service, reason: str, protocol: str = "v2") -> float:
    return svc.registry.counter(
        "sidecar_parse_failures_total", "", {"protocol": protocol, "reason": reason}
    ).value


def _answer(upstream: RecordingUpstream, body: bytes) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    upstream.routes[PATH] = handler


def _tensor(shape: list[int], data: bytes) -> bytes:
    head = orjson.dumps({"name": "x", "shape": shape, "datatype": "FP32"})[:-1]
    return b'{"inputs":[' + head + b',"data":' + data + b"}]}"


HOSTILE_REQUESTS = {
    # A shape declaring two million empty rows: refused before one is allocated.
    "empty_rows": (_tensor([2_000_000, 0], b"[]"), "ParseError"),
    "empty_rows_3d": (_tensor([1, 2_000_000, 0], b"[]"), "ParseError"),
    # Nested deeper than any tensor, within orjson's own limit (1024): the flattening
    # once ran into Python's recursion limit (a 500, the answer lost).
    "nested_1000": (_tensor([1, 1], _nested(1000)), "ParseError"),
    # Deeper than orjson's limit: the JSON does not parse.
    "nested_2000": (_tensor([1], _nested(2000)), "request_json"),
    "many_dims": (_tensor([1] * 40, _nested(40)), "ParseError"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
def test_hostile_requests_are_counted_and_answered_as_upstream_did(
    upstream: RecordingUpstream, case: str
) -> None:
    body, reason = HOSTILE_REQUESTS[case]
    _answer(upstream, V2_RESPONSE)
    with running_sidecar(upstream.url) as svc:
        before = _failures(svc, reason)
        r = _post(svc, PATH, body)
        assert r.status == 200
        assert r.body == V2_RESPONSE
        assert r.getheader("x-decision-id") is None
        assert upstream.seen[-1].body == body
        assert _failures(svc, reason) == before + 1
        # The proxy still answers the next caller.
        ok = _post(svc, PATH, orjson.dumps({"inputs": [_ok_tensor()]}))
        assert ok.status == 200


def _ok_tensor() -> dict[str, object]:
    return {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}


HOSTILE_RESPONSES = {
    "null": b"null",  # readable JSON, no outputs: counted like any answer without them
    "empty_rows": orjson.dumps(
        {"outputs": [{"name": "label", "shape": [2_000_000, 0], "datatype": "INT64", "data": []}]}
    ),
    "nested_1000": b'{"outputs":[{"name":"label","shape":[2],"datatype":"INT64","data":'
    + _nested(1000)
    + b"}]}",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RESPONSES))
def test_hostile_responses_are_counted_and_passed_back_unchanged(
    upstream: RecordingUpstream, case: str
) -> None:
    answer = HOSTILE_RESPONSES[case]
    _answer(upstream, answer)
    with running_sidecar(upstream.url) as svc:
        before = _failures(svc, "ParseError")
        r = _post(svc, PATH, orjson.dumps({"inputs": [_ok_tensor()]}))
        assert (r.status, r.body) == (200, answer)
        assert _failures(svc, "ParseError") == before + 1


BINARY_HEADER = orjson.dumps(
    {
        "inputs": [
            {
                "name": "x",
                "shape": [2_000_000, 1000],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 8},
            }
        ]
    }
)


@pytest.mark.parametrize(
    ("body", "length"),
    [
        (BINARY_HEADER + b"\0" * 8, str(len(BINARY_HEADER))),  # shape lies about the bytes
        (BINARY_HEADER + b"\0" * 8, "999999"),  # header longer than the body
        (BINARY_HEADER + b"\0" * 8, "twelve"),
        (BINARY_HEADER.replace(b'"FP32"', b'"BYTES"') + b"\0" * 8, str(len(BINARY_HEADER) + 1)),
    ],
)
def test_hostile_binary_bodies_are_counted_and_forwarded_untouched(
    upstream: RecordingUpstream, body: bytes, length: str
) -> None:
    _answer(upstream, UPSTREAM_ANSWER)
    with running_sidecar(upstream.url) as svc:
        before = _failures(svc, "request_binary")
        r = _post(svc, PATH, body, {"inference-header-content-length": length})
        assert (r.status, r.body) == (200, UPSTREAM_ANSWER)
        assert upstream.seen[-1].body == body
        assert _failures(svc, "request_binary") == before + 1


def test_shapes_are_checked_before_data_is_touched() -> None:
    # The check is on the declared shape: a [2000000, 0] tensor never reaches the
    # row split, whatever its data.
    with pytest.raises(ParseError, match="holds no values"):
        v2.tensor({"name": "x", "shape": [2_000_000, 0], "datatype": "FP32", "data": []})
    with pytest.raises(ParseError, match="nested deeper"):
        v2.tensor(
            {"name": "x", "shape": [1], "datatype": "FP32", "data": orjson.loads(_nested(100))}
        )
    with pytest.raises(ParseError, match="mixes lists and values"):
        v2.tensor({"name": "x", "shape": [3], "datatype": "FP32", "data": [[1], 2, 3]})
    _, _, data = v2.tensor(
        {
            "name": "x",
            "shape": [2, 2, 2],
            "datatype": "FP32",
            "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]],
        }
    )
    assert data == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_shape_of_millions_of_empty_rows_allocates_nothing_for_them() -> None:
    request = orjson.loads(_tensor([2_000_000, 0], b"[]"))
    response = orjson.loads(V2_RESPONSE)
    tracemalloc.start()
    try:
        with pytest.raises(ParseError):
            v2.parse(request, response, [], [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Two million empty rows would be over 100 MB of lists.
    assert peak < 1 << 20


V1_PATH = "/v1/models/credit:predict"
V1_CASES = {
    # 300 deep parses (orjson reads 1024) but could not be written back (254): such a
    # decision once failed the record and publish stages for its whole batch.
    "row": (b'{"instances":[' + _nested(300) + b"]}", b'{"predictions":[1]}'),
    "record_value": (b'{"instances":[{"a":' + _nested(300) + b"}]}", b'{"predictions":[1]}'),
    "prediction": (b'{"instances":[[1,2]]}', b'{"predictions":[' + _nested(300) + b"]}"),
}


@pytest.mark.parametrize("case", sorted(V1_CASES))
def test_deeply_nested_v1_values_are_not_recorded(upstream: RecordingUpstream, case: str) -> None:
    body, answer = V1_CASES[case]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    upstream.routes[V1_PATH] = handler
    with running_sidecar(upstream.url) as svc:
        before = _failures(svc, "ParseError", "kserve_v1")
        r = _post(svc, V1_PATH, body)
        assert (r.status, r.body) == (200, answer)
        assert _failures(svc, "ParseError", "kserve_v1") == before + 1
        assert svc.pipeline.drain(5)
        stages = svc.registry.render()
    assert 'sidecar_stage_failures_total{stage="record"} 0.0' in stages
    assert 'sidecar_stage_failures_total{stage="publish"} 0.0' in stages


def test_nesting_that_images_use_is_recorded() -> None:
    image_row = [[[0.1, 0.2, 0.3]] * 4] * 4
    check_nesting(image_row)
    check_nesting({"a": [[1, 2]], "b": 3})
    with pytest.raises(ParseError, match="nested deeper"):
        check_nesting([orjson.loads(_nested(MAX_NESTING))])
    check_nesting(orjson.loads(_nested(MAX_NESTING)))
