"""ModelInfer messages read into the V2 JSON shape, so the V2 parser reads a gRPC call as an HTTP one.

Typed `contents` are taken per datatype (the protocol's table: INT8-INT32 in
`int_contents`, UINT8-UINT32 in `uint_contents`, ...); `raw_input_contents` /
`raw_output_contents` hold one little-endian, row-major blob per tensor, in the
layout of the binary tensor extension, and are decoded by its decoder. FP16
and BF16 have no typed field: they only come raw. Nothing here writes bytes
that are forwarded, except `take_group_attributes` (then the request is
re-serialised, the one case where the upstream gets other bytes than the client sent).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)
from sidecar.dataplane.protocols import ParseError, binary

# The typed field of InferTensorContents that carries each datatype.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Tensor = ModelInferRequest.InferInputTensor | ModelInferResponse.InferOutputTensor


def parameter(p: InferParameter) -> Any:
    """The value an InferParameter holds (None when none is set)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _tensor(t: Tensor, contents: InferTensorContents, raw: bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
    if raw is not None:
        out["data"] = binary.decode(out, memoryview(raw))
        return out
    field = _CONTENTS.get(t.datatype)
    if field is None:
        raise ParseError(f"tensor {t.name!r}: {t.datatype or 'no datatype'} has no typed contents")
    values = getattr(contents, field)
    if t.datatype == "BYTES":
        try:
            out["data"] = [v.decode() for v in values]
        except UnicodeDecodeError:
            raise ParseError(f"tensor {t.name!r}: BYTES element is not UTF-8") from None
    else:
        out["data"] = list(values)
    return out


def _tensors(tensors: Any, raw: Any, what: str) -> list[dict[str, Any]]:
    if raw and len(raw) != len(tensors):
        # The protocol: when raw contents are used, every tensor has one, in order.
        raise ParseError(f"{len(raw)} {what} for {len(tensors)} tensors")
    if raw:
        return [_tensor(t, t.contents, r) for t, r in zip(tensors, raw, strict=True)]
    return [_tensor(t, t.contents, None) for t in tensors]


def read_request(message: ModelInferRequest) -> dict[str, Any]:
    """The request as the V2 parser takes it: id, inputs (with their data), requested outputs."""
    return {
        "id": message.id,
        "inputs": _tensors(message.inputs, message.raw_input_contents, "raw_input_contents"),
        "outputs": [{"name": o.name} for o in message.outputs],
    }


def read_response(message: ModelInferResponse) -> dict[str, Any]:
    """The answer as the V2 parser takes it; also what a held answer is kept as (JSON)."""
    out: dict[str, Any] = {
        "model_name": message.model_name,
        "outputs": _tensors(message.outputs, message.raw_output_contents, "raw_output_contents"),
    }
    if message.model_version:
        out["model_version"] = message.model_version
    if message.id:
        out["id"] = message.id
    return out


def parse_request(data: bytes) -> ModelInferRequest:
    try:
        message: ModelInferRequest = ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise ParseError(f"not a ModelInferRequest: {exc}") from None
    return message


def parse_response(data: bytes) -> ModelInferResponse:
    try:
        message: ModelInferResponse = ModelInferResponse.FromString(data)
    except DecodeError as exc:
        raise ParseError(f"not a ModelInferResponse: {exc}") from None
    return message


def take_group_attributes(message: ModelInferRequest, field: str) -> Any:
    """Remove `parameters[field]` from the request and return its value (None when absent)."""
    if field not in message.parameters:
        return None
    value = parameter(message.parameters[field])
    del message.parameters[field]
    return value
