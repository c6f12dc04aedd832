"""ModelInfer messages read into the V2 shape: every datatype, typed and raw, as the HTTP path reads them."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import ModelInferRequest, ModelInferResponse
from sidecar.dataplane.grpc.tensors import (
    parse_request,
    parse_response,
    read_request,
    read_response,
    take_group_attributes,
)
from sidecar.dataplane.protocols import ParseError, v2

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
TYPED = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _values(datatype: str) -> np.ndarray[Any, Any]:
    return np.array([[0, 1, 2], [3, 100, 7]]).astype(NUMERIC[datatype])


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_raw_contents_decode_as_the_binary_extension(datatype: str) -> None:
    values = _values(datatype)
    req = ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype=datatype, shape=[2, 3])
    req.raw_input_contents.append(values.astype(values.dtype.newbyteorder("<")).tobytes())
    got = read_request(parse_request(req.SerializeToString()))["inputs"][0]["data"]
    expected = values.astype(np.float32) if datatype == "BF16" else values
    assert got == expected.ravel().tolist()


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_read_per_datatype(datatype: str) -> None:
    values = _values(datatype)
    req = ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=[2, 3])
    getattr(t.contents, TYPED[datatype]).extend(values.ravel().tolist())
    tensor = read_request(req)["inputs"][0]
    assert tensor["data"] == values.ravel().tolist()
    # And the V2 parser takes it as it takes the JSON form.
    assert v2.tensor(tensor) == ("x", [2, 3], values.ravel().tolist())


def test_bytes_both_ways() -> None:
    req = ModelInferRequest(model_name="m")
    t = req.inputs.add(name="s", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"a", "héllo".encode()])
    assert read_request(req)["inputs"][0]["data"] == ["a", "héllo"]
    raw = ModelInferRequest(model_name="m")
    raw.inputs.add(name="s", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(b"\x01\x00\x00\x00a\x06\x00\x00\x00h\xc3\xa9llo")
    assert read_request(raw)["inputs"][0]["data"] == ["a", "héllo"]
    t.contents.bytes_contents.append(b"\xff")
    with pytest.raises(ParseError, match="UTF-8"):
        read_request(req)


def test_half_floats_only_come_raw() -> None:
    req = ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(ParseError, match="no typed contents"):
        read_request(req)


def test_raw_contents_must_match_the_tensors() -> None:
    req = ModelInferRequest(model_name="m")
    req.inputs.add(name="a", datatype="FP32", shape=[1])
    req.inputs.add(name="b", datatype="FP32", shape=[1])
    req.raw_input_contents.append(b"\x00\x00\x80\x3f")
    with pytest.raises(ParseError, match="1 raw_input_contents for 2 tensors"):
        read_request(req)
    # A shape that claims more than the bytes hold is refused before anything is allocated.
    big = ModelInferRequest(model_name="m")
    big.inputs.add(name="a", datatype="FP32", shape=[1_000_000, 1_000_000])
    big.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(ParseError, match="needs"):
        read_request(big)


def test_garbage_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_request(b"\xff\xff\xff")
    with pytest.raises(ParseError):
        parse_response(b"\x0a\x05ab")


def test_response_keeps_version_and_id() -> None:
    res = ModelInferResponse(model_name="m", model_version="3", id="r")
    t = res.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    t.contents.fp32_contents.extend([0.25, 0.75])
    assert read_response(res) == {
        "model_name": "m",
        "model_version": "3",
        "id": "r",
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}
        ],
    }


def test_group_attributes_are_taken_out_of_parameters() -> None:
    req = ModelInferRequest(model_name="m")
    req.parameters["group_attributes"].string_param = "gender=F"
    req.parameters["other"].bool_param = True
    assert take_group_attributes(req, "group_attributes") == "gender=F"
    assert list(req.parameters) == ["other"]
    assert take_group_attributes(req, "group_attributes") is None
