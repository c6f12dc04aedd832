"""Inference calls: passed through byte-identical, and each row recorded as a decision."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp import web

from sidecar.service import Service
from tests.servers import RecordingUpstream, running_sidecar

V2_REQUEST = {
    "id": "r1",
    "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}],
    "parameters": {"content_type": "np"},
    "outputs": [{"name": "predict_proba"}],
}
V2_RESPONSE = (
    b'{"model_name":"credit","model_version":"7","id":"r1","outputs":['
    b'{"name":"label","shape":[2],"datatype":"INT64","data":[0,1]},'
    b'{"name":"predict_proba","shape":[2,2],"datatype":"FP32","data":[0.9,0.1,0.35,0.65]}]}'
)


def _post(svc: Service, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    p = urlsplit(svc.proxy_url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
    c.request(
        "POST", path, body=body, headers={"content-type": "application/json", **(headers or {})}
    )
    r = c.getresponse()
    r.body = r.read()  # type: ignore[attr-defined]
    return r


def _answer(upstream: RecordingUpstream, path: str, body: bytes, status: int = 200) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    upstream.routes[path] = handler


def _decisions(svc: Service, rid: str, n: int) -> list[Any]:
    assert svc.pipeline.drain(5)
    return [svc.store.get(f"{rid}/{i}") for i in range(n)]


def test_v2_rows_become_decisions(upstream: RecordingUpstream) -> None:
    _answer(upstream, "/v2/models/credit/versions/7/infer", V2_RESPONSE)
    body = orjson.dumps(V2_REQUEST)
    with running_sidecar(upstream.url, model={"feature_names": ["a", "b", "c"]}) as svc:
        r = _post(svc, "/v2/models/credit/versions/7/infer", body, {"x-request-id": "req-42"})
        assert r.status == 200
        assert r.body == V2_RESPONSE
        rid = r.getheader("x-decision-id")
        assert rid and rid != "req-42"
        assert upstream.seen[-1].body == body
        d0, d1 = _decisions(svc, rid, 2)
    assert d0.call_id == d1.call_id == rid
    assert d0.request_id == d1.request_id == "req-42"
    assert d0.protocol == "v2" and d0.model_name == "credit" and d0.model_version == "7"
    assert d0.feature_names == ["a", "b", "c"]
    assert d0.features == [1, 2, 3] and d1.features == [4, 5, 6]
    assert d0.prediction == 0 and d1.prediction == 1
    assert d0.probabilities == pytest.approx([0.9, 0.1])
    assert d1.confidence == pytest.approx(0.65)
    assert d0.upstream_status == 200 and d0.upstream_latency_ms > 0


def test_v2_one_tensor_per_feature_and_bytes(upstream: RecordingUpstream) -> None:
    resp = (
        b'{"outputs":[{"name":"probabilities","shape":[2,1],"datatype":"FP64","data":[0.2,0.8]}]}'
    )
    _answer(upstream, "/v2/models/m/infer", resp)
    req = {
        "inputs": [
            {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["paris", "oslo"]},
            {"name": "age", "shape": [2, 1], "datatype": "INT32", "data": [31, 47]},
            {"name": "ok", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        ]
    }
    with running_sidecar(upstream.url) as svc:
        r = _post(svc, "/v2/models/m/infer", orjson.dumps(req))
        assert r.body == resp
        rid = r.getheader("x-decision-id")
        d0, d1 = _decisions(svc, rid, 2)
    assert d0.feature_names == ["city", "age", "ok"]
    assert d0.features == ["paris", 31, True] and d1.features == ["oslo", 47, False]
    assert d0.probabilities == pytest.approx([0.8, 0.2]) and d0.prediction == 0
    assert d1.prediction == 1 and d1.confidence == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("request_body", "response_body", "features", "prediction", "confidence"),
    [
        (
            {"instances": [[1.0, 2.0], [3.0, 4.0]]},
            {"predictions": [0.3, 0.9]},
            [[1.0, 2.0], [3.0, 4.0]],
            [0.3, 0.9],
            [0.7, 0.9],
        ),
        ({"instances": [{"b": 2, "a": 1}]}, {"predictions": [[0.2, 0.8]]}, [[1, 2]], [1], [0.8]),
        (
            {"inputs": [[5, 6]]},
            {"predictions": [{"label": "yes", "probabilities": [0.4, 0.6]}]},
            [[5, 6]],
            ["yes"],
            [0.6],
        ),
        ({"instances": [[1, 2]]}, {"predictions": [3]}, [[1, 2]], [3], [None]),
    ],
)
def test_kserve_v1(
    upstream: RecordingUpstream,
    request_body: Any,
    response_body: Any,
    features: list[Any],
    prediction: list[Any],
    confidence: list[Any],
) -> None:
    resp = orjson.dumps(response_body)
    _answer(upstream, "/v1/models/credit:predict", resp)
    with running_sidecar(upstream.url, model={"feature_names": ["a", "b"]}) as svc:
        r = _post(svc, "/v1/models/credit:predict", orjson.dumps(request_body))
        assert r.status == 200 and r.body == resp
        rid = r.getheader("x-decision-id")
        got = _decisions(svc, rid, len(features))
    assert [d.protocol for d in got] == ["kserve_v1"] * len(features)
    assert [d.features for d in got] == features
    assert [d.prediction for d in got] == prediction
    assert [d.confidence for d in got] == [pytest.approx(c) if c else c for c in confidence]


@pytest.mark.parametrize(
    "request_body",
    [
        {"dataframe_split": {"columns": ["b", "a"], "data": [[2, 1], [4, 3]]}},
        {"dataframe_records": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]},
        {"instances": [[1, 2], [3, 4]]},
        {"inputs": {"a": [1, 3], "b": [2, 4]}},
    ],
)
def test_mlflow(upstream: RecordingUpstream, request_body: Any) -> None:
    resp = b'{"predictions": [0, 1]}'
    _answer(upstream, "/invocations", resp)
    with running_sidecar(
        upstream.url, model={"feature_names": ["a", "b"], "name": "credit-mlflow"}
    ) as svc:
        r = _post(svc, "/invocations", orjson.dumps(request_body))
        assert r.body == resp
        got = _decisions(svc, r.getheader("x-decision-id"), 2)
    assert [d.features for d in got] == [[1, 2], [3, 4]]
    assert [d.prediction for d in got] == [0, 1]
    assert got[0].model_name == "credit-mlflow" and got[0].protocol == "mlflow"


@pytest.mark.parametrize(
    ("path", "request_body", "response_body", "reason"),
    [
        ("/v2/models/m/infer", b"{not json", V2_RESPONSE, "request_json"),
        ("/v2/models/m/infer", b'{"inputs": "nope"}', V2_RESPONSE, "ParseError"),
        (
            "/v2/models/m/infer",
            b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1]}]}',
            V2_RESPONSE,
            "ParseError",
        ),
        (
            "/v2/models/m/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "WAT", "data": [1, 2]}]}',
            V2_RESPONSE,
            "ParseError",
        ),
        ("/v2/models/m/infer", orjson.dumps(V2_REQUEST), b"<html>oops</html>", "response_json"),
        ("/v2/models/m/infer", orjson.dumps(V2_REQUEST), b'{"outputs": 3}', "ParseError"),
        (
            "/v1/models/m:predict",
            b'{"instances": [[1], [2]]}',
            b'{"predictions": [1]}',
            "ParseError",
        ),
        ("/v1/models/m:predict", b"[1, 2]", b'{"predictions": [1]}', "ParseError"),
        ("/v1/models/m:predict", b"\xff\xfe", b'{"predictions": [1]}', "request_json"),
        ("/invocations", b'{"something": "else"}', b'{"predictions": [1]}', "ParseError"),
        ("/invocations", b"a,b\n1,2\n", b"[1]", "request_json"),
    ],
)
def test_parse_failures_are_forwarded_untouched_and_counted(
    upstream: RecordingUpstream, path: str, request_body: bytes, response_body: bytes, reason: str
) -> None:
    _answer(upstream, path, response_body)
    with running_sidecar(upstream.url) as svc:
        r = _post(svc, path, request_body, {"content-type": "text/plain"})
        assert r.status == 200
        assert r.body == response_body
        assert r.getheader("x-decision-id") is None
        assert upstream.seen[-1].body == request_body
        metrics = svc.registry.render()
    assert f'reason="{reason}"}} 1' in metrics, metrics


def test_upstream_errors_pass_through_without_decisions(upstream: RecordingUpstream) -> None:
    _answer(upstream, "/v2/models/m/infer", b'{"error": "model not loaded"}', status=503)
    with running_sidecar(upstream.url) as svc:
        r = _post(svc, "/v2/models/m/infer", orjson.dumps(V2_REQUEST))
        assert r.status == 503 and r.body == b'{"error": "model not loaded"}'
        assert r.getheader("x-decision-id") is None


def test_oversized_inference_body_gets_413(upstream: RecordingUpstream) -> None:
    _answer(upstream, "/v2/models/m/infer", V2_RESPONSE)
    with running_sidecar(upstream.url, proxy={"max_inference_body_bytes": 4096}) as svc:
        r = _post(svc, "/v2/models/m/infer", b" " * 5000)
        err = orjson.loads(r.body)
        assert r.status == 413
        assert "proxy.max_inference_body_bytes" in err["detail"]
        # Non-inference calls of any size still stream through.
        _answer(upstream, "/big", b"ok")
        assert _post(svc, "/big", b" " * 50_000).body == b"ok"
    assert [s.path_qs for s in upstream.seen] == ["/big"]
