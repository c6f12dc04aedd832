"""The binary tensor extension: tritonclient.http's calls become decisions, bytes untouched."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from sidecar.dataplane.protocols import ParseError, binary, v2
from sidecar.decisions import Decision
from sidecar.service import Service
from tests.servers import RecordingUpstream, running_sidecar
from tests.v2_binary_model import serialize_bytes, v2_binary_route

PATH = "/v2/models/credit/infer"
NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16,
}


def _decode(datatype: str, shape: list[int], raw: bytes) -> list[Any]:
    t: dict[str, Any] = {
        "name": "x",
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": len(raw)},
    }
    binary.fill([t], memoryview(raw))
    data: list[Any] = t["data"]
    return data


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_every_fixed_size_datatype_decodes_as_the_json_path_reads_it(datatype: str) -> None:
    values = np.array([[0, 1, 2], [3, 100, 7]]).astype(NUMERIC[datatype])
    raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    got = _decode(datatype, [2, 3], raw)
    expected = values.astype(np.float32).ravel().tolist() if datatype == "BF16" else None
    assert got == (expected or values.ravel().tolist())
    assert all(type(v) is (bool if datatype == "BOOL" else type(got[0])) for v in got)
    with pytest.raises(ParseError, match="needs"):
        _decode(datatype, [2, 4], raw)


def test_bytes_elements_are_length_prefixed_strings() -> None:
    raw = serialize_bytes(["35", "", "héllo"])
    assert _decode("BYTES", [3], raw) == ["35", "", "héllo"]
    with pytest.raises(ParseError, match="BYTES"):
        _decode("BYTES", [4], raw)  # one more element than there are
    with pytest.raises(ParseError, match="after the BYTES"):
        _decode("BYTES", [2], raw)
    with pytest.raises(ParseError, match="past the end"):
        _decode("BYTES", [1], (200).to_bytes(4, "little") + b"ab")
    with pytest.raises(ParseError, match="UTF-8"):
        _decode("BYTES", [1], (2).to_bytes(4, "little") + b"\xff\xfe")
    # A shape claiming a million elements in 12 bytes is refused before any is read.
    with pytest.raises(ParseError, match="1000000 BYTES elements"):
        _decode("BYTES", [1000, 1000], raw)


def test_malformed_binary_bodies_are_parse_errors() -> None:
    assert binary.header_length([(b"x", b"1")]) is None
    assert binary.header_length([(binary.HEADER, b" 12 ")]) == 12
    for bad in (b"abc", b"-1"):
        with pytest.raises(ParseError):
            binary.header_length([(binary.HEADER, bad)])
    with pytest.raises(ParseError, match="in a body of"):
        binary.split(b"{}", 10)
    with pytest.raises(ParseError, match="JSON header"):
        binary.split(b"{nope", 5)
    header, rest = binary.split(b'{"a":1}xyz', 7)
    assert header == {"a": 1} and rest.tobytes() == b"xyz"
    t = {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 8}}
    with pytest.raises(ParseError, match="out of bounds"):
        binary.fill([t], memoryview(b"\0" * 4))
    t["parameters"] = {"binary_data_size": 4}
    with pytest.raises(ParseError, match="belong to no tensor"):
        binary.fill([t], memoryview(b"\0" * 6))
    with pytest.raises(ParseError, match="unknown datatype"):
        binary.fill([{**t, "datatype": "FP8"}], memoryview(b"\0" * 4))


# --- through the sidecar, with the real tritonclient.http client --------------------


@pytest.fixture
def model(upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    upstream.routes[PATH] = v2_binary_route()
    yield upstream


def _client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=urlsplit(url).netloc)


def _raw(url: str, body: bytes, json_size: int | None) -> tuple[int, dict[str, str], bytes]:
    p = urlsplit(url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
    headers = {"content-type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    c.request("POST", PATH, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def _stored(svc: Service, request_id: str) -> list[Decision]:
    assert svc.pipeline.drain(5)
    found, more = svc.store.by_request(request_id)
    assert not more
    return found


def _seen_body(model: RecordingUpstream) -> tuple[Any, bytes]:
    """(JSON header, binary data) of what the model server last received."""
    seen = model.seen[-1]
    headers = {k.lower(): v for k, v in seen.raw_headers}
    n = int(headers[b"inference-header-content-length"])
    return orjson.loads(seen.body[:n]), seen.body[n:]


MODES = {
    # name: (inputs binary?, outputs binary?)
    "binary": (True, True),
    "json": (False, False),
    "binary_in_json_out": (True, False),
    "json_in_binary_out": (False, True),
}


def _call(
    x: np.ndarray, datatype: str, in_binary: bool, out_binary: bool
) -> tuple[list[triton.InferInput], list[triton.InferRequestedOutput]]:
    inp = triton.InferInput("x", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=in_binary)
    outs = [
        triton.InferRequestedOutput("predict_proba", binary_data=out_binary),
        triton.InferRequestedOutput("label", binary_data=out_binary),
    ]
    return [inp], outs


def _expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array([[float(v) for v in r] for r in x.reshape(x.shape[0], -1)])
    p = 1.0 / (1.0 + np.exp(-rows.sum(axis=1) / 100.0))
    return np.stack([1.0 - p, p], axis=1).astype(np.float32), (p >= 0.5).astype(np.int64)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_tritonclient_calls_become_decisions_with_answers_byte_identical(
    model: RecordingUpstream, mode: str
) -> None:
    in_binary, out_binary = MODES[mode]
    x = np.array([[35.0, 52.5, -120.25], [61.0, 12.0, 0.5]], dtype=np.float32)
    inputs, outputs = _call(x, "FP32", in_binary, out_binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs, request_id=f"trit-{mode}"
    )
    with running_sidecar(model.url) as svc:
        direct = _raw(model.url, body, json_size)
        proxied = _raw(svc.proxy_url, body, json_size)
        # Byte for byte the model's answer; the upstream saw the client's bytes.
        assert proxied[0] == direct[0] == 200
        assert proxied[2] == direct[2]
        assert model.seen[-1].body == model.seen[-2].body == body
        assert ("inference-header-content-length" in proxied[1]) == out_binary
        assert proxied[1]["x-decision-id"]

        # The real client, through the sidecar: the same tensors as direct.
        via = _client(svc.proxy_url).infer("credit", inputs, outputs=outputs, request_id="t-2")
        own = _client(model.url).infer("credit", inputs, outputs=outputs, request_id="t-2")
        for name in ("predict_proba", "label"):
            assert np.array_equal(via.as_numpy(name), own.as_numpy(name))

        first = _stored(svc, f"trit-{mode}")
        second = _stored(svc, "t-2")
    proba, label = _expected(x)
    for decisions in (first, second):
        assert [d.row for d in decisions] == [0, 1]
        assert all(d.protocol == "v2" and d.model_version == "3" for d in decisions)
        assert [d.features for d in decisions] == x.tolist()
        assert [d.probabilities for d in decisions] == proba.tolist()
        assert [d.prediction for d in decisions] == label.tolist()
        assert decisions[1].confidence == pytest.approx(float(proba[1].max()))
    assert first[0].call_id == proxied[1]["x-decision-id"]


@pytest.mark.parametrize("datatype", [*sorted(NUMERIC), "BYTES"])
def test_every_datatype_through_the_sidecar(model: RecordingUpstream, datatype: str) -> None:
    if datatype == "BYTES":
        x: np.ndarray = np.array([[b"3", b"4"], [b"90", b"7"]], dtype=object)
        features = [["3", "4"], ["90", "7"]]
    else:
        x = np.array([[3, 4], [90, 7]]).astype(NUMERIC[datatype])
        features = (x.astype(np.float32) if datatype == "BF16" else x).tolist()
    inputs, outputs = _call(x, datatype, True, True)
    with running_sidecar(model.url) as svc:
        via = _client(svc.proxy_url).infer(
            "credit", inputs, outputs=outputs, request_id=f"dt-{datatype}"
        )
        own = _client(model.url).infer("credit", inputs, outputs=outputs, request_id="direct")
        assert np.array_equal(via.as_numpy("predict_proba"), own.as_numpy("predict_proba"))
        decisions = _stored(svc, f"dt-{datatype}")
    assert [d.features for d in decisions] == features
    assert [d.probabilities for d in decisions] == own.as_numpy("predict_proba").tolist()


def test_mixed_json_and_binary_tensors(model: RecordingUpstream) -> None:
    # Per-feature tensors, one binary and one JSON; one output binary, one JSON.
    age = triton.InferInput("age", [3], "FP64")
    age.set_data_from_numpy(np.array([30.0, 41.5, 77.0]), binary_data=True)
    debt = triton.InferInput("debt", [3], "INT32")
    debt.set_data_from_numpy(np.array([5, -200, 3], dtype=np.int32), binary_data=False)
    outputs = [
        triton.InferRequestedOutput("predict_proba", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=False),
    ]
    with running_sidecar(model.url) as svc:
        via = _client(svc.proxy_url).infer("credit", [age, debt], outputs=outputs, request_id="mx")
        decisions = _stored(svc, "mx")
    assert [d.feature_names for d in decisions] == [["age", "debt"]] * 3
    assert [d.features for d in decisions] == [[30.0, 5], [41.5, -200], [77.0, 3]]
    assert [d.prediction for d in decisions] == via.as_numpy("label").tolist()
    assert [d.probabilities for d in decisions] == via.as_numpy("predict_proba").tolist()


def test_binary_data_output_asks_for_every_output_in_binary(model: RecordingUpstream) -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    inp = triton.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    with running_sidecar(model.url) as svc:
        # No outputs named: tritonclient sends parameters.binary_data_output = true.
        via = _client(svc.proxy_url).infer("credit", [inp], request_id="all-binary")
        decisions = _stored(svc, "all-binary")
        header, data = _seen_body(model)
    assert header["parameters"] == {"binary_data_output": True}
    assert data == x.tobytes()
    assert [d.probabilities for d in decisions] == via.as_numpy("predict_proba").tolist()
    assert decisions[0].features == [1.0, 2.0]


def test_group_attributes_in_a_binary_body_are_taken_out(model: RecordingUpstream) -> None:
    x = np.array([[10.0, 20.0]], dtype=np.float32)
    inp = triton.InferInput("x", [1, 2], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [triton.InferRequestedOutput("predict_proba", binary_data=True)]
    with running_sidecar(model.url) as svc:
        via = _client(svc.proxy_url).infer(
            "credit",
            [inp],
            outputs=outputs,
            request_id="grp",
            parameters={"group_attributes": "gender=F"},
        )
        decisions = _stored(svc, "grp")
        header, data = _seen_body(model)
    # The model sees the call as if no attributes had been sent; the header length fits.
    assert "group_attributes" not in header.get("parameters", {})
    assert data == x.tobytes()
    assert decisions[0].group_attributes == {"gender": "F"}
    assert decisions[0].probabilities == via.as_numpy("predict_proba").tolist()[0]


def test_a_header_only_binary_body_keeps_its_length_right_when_attributes_are_taken(
    model: RecordingUpstream,
) -> None:
    # No binary inputs, binary outputs asked for: the whole body is the JSON header.
    body = orjson.dumps(
        {
            "id": "hdr-only",
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [3.0, 4.0]}],
            "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}}],
            "parameters": {"group_attributes": {"gender": "F"}},
        }
    )
    with running_sidecar(model.url) as svc:
        status, headers, answer = _raw(svc.proxy_url, body, len(body))
        decisions = _stored(svc, "hdr-only")
        header, data = _seen_body(model)
    assert status == 200 and "inference-header-content-length" in headers
    assert data == b"" and "parameters" not in header
    assert decisions[0].group_attributes == {"gender": "F"}
    assert decisions[0].features == [3.0, 4.0]
    n = int(headers["inference-header-content-length"])
    proba = np.frombuffer(answer[n:], dtype="<f4").tolist()
    assert decisions[0].probabilities == proba


@pytest.mark.parametrize("shape", ["4", [2, -1], [2, 1.5], [True], None])
def test_a_bad_shape_is_refused_alike_by_the_binary_and_the_json_path(shape: Any) -> None:
    t = {"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": 4}}
    said = r"tensor 'x': 'shape' must be a list of non-negative integers"
    with pytest.raises(ParseError, match=said):
        binary.fill([t], memoryview(b"\0" * 4))
    with pytest.raises(ParseError, match=said):
        v2.tensor({"name": "x", "datatype": "FP32", "shape": shape, "data": [0.0]})
