"""A small V2 model server route that speaks the binary tensor extension, as Triton does.

The demo model server (sidecar/demo/model_server.py) speaks V2 JSON only; this one
takes and answers binary tensors too (`Inference-Header-Content-Length`,
`parameters.binary_data_size`, `binary_data` per output or `binary_data_output`
for all), and mixed JSON and binary tensors. Its tensors are read and written
with tritonclient's own helpers, so it does not share the sidecar's code.

The model: the row's values summed (BYTES as numbers), p = sigmoid(sum / 100);
outputs `predict_proba` [N, 2] FP32 and `label` [N] INT64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from aiohttp import web
from tritonclient.utils import (
    deserialize_bytes_tensor,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from tests.servers import Handler

HEADER = "Inference-Header-Content-Length"


def _input(t: dict[str, Any], binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    shape = t["shape"]
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if t["datatype"] == "BYTES":
            return np.array(t["data"], dtype=object).reshape(shape), offset
        dtype = triton_to_np_dtype(t["datatype"])
        return np.array(t["data"], dtype=dtype).reshape(shape), offset
    raw = bytes(binary[offset : offset + size])
    if t["datatype"] == "BYTES":
        arr = deserialize_bytes_tensor(raw)
    else:
        arr = np.frombuffer(raw, dtype=triton_to_np_dtype(t["datatype"]))
    return arr.reshape(shape), offset + size


def _as_float(a: np.ndarray) -> np.ndarray:
    if a.dtype == object:
        return np.array([float(v.decode() if isinstance(v, bytes) else v) for v in a.ravel()])
    return a.astype(np.float64).ravel()


def infer(header: dict[str, Any], binary: memoryview) -> tuple[dict[str, Any], bytes]:
    offset = 0
    arrays = []
    for t in header["inputs"]:
        arr, offset = _input(t, binary, offset)
        arrays.append(arr)
    if len(arrays) == 1:
        a = arrays[0]
        n = a.shape[0]
        x = _as_float(a).reshape(n, -1)
    else:
        x = np.stack([_as_float(a) for a in arrays], axis=1)
    p = 1.0 / (1.0 + np.exp(-x.sum(axis=1) / 100.0))
    proba = np.stack([1.0 - p, p], axis=1).astype(np.float32)
    label = (p >= 0.5).astype(np.int64)
    values = {"predict_proba": proba, "label": label}
    all_binary = bool((header.get("parameters") or {}).get("binary_data_output"))
    requested = header.get("outputs") or [{"name": "predict_proba"}, {"name": "label"}]
    outputs = []
    data = b""
    for o in requested:
        arr = values[o["name"]]
        datatype = "FP32" if arr.dtype == np.float32 else "INT64"
        tensor: dict[str, Any] = {"name": o["name"], "datatype": datatype, "shape": list(arr.shape)}
        if all_binary or (o.get("parameters") or {}).get("binary_data"):
            raw = arr.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            data += raw
        else:
            tensor["data"] = arr.ravel().tolist()
        outputs.append(tensor)
    body = {"model_name": "credit", "model_version": "3", "outputs": outputs}
    if "id" in header:
        body["id"] = header["id"]
    return body, data


def v2_binary_route() -> Handler:
    """A handler for `POST /v2/models/credit/infer` on a RecordingUpstream."""

    async def handler(request: web.Request) -> web.Response:
        raw: bytes = request["body"]
        length = request.headers.get(HEADER)
        n = int(length) if length is not None else len(raw)
        header = orjson.loads(raw[:n])
        body, data = infer(header, memoryview(raw)[n:])
        head = orjson.dumps(body)
        if not data:
            return web.Response(body=head, content_type="application/json")
        return web.Response(
            body=head + data,
            content_type="application/octet-stream",
            headers={HEADER: str(len(head))},
        )

    return handler


def serialize_bytes(values: list[str]) -> bytes:
    """BYTES elements as the extension lays them out (tritonclient's helper)."""
    out = serialize_byte_tensor(np.array([v.encode() for v in values], dtype=object))
    assert out is not None
    return bytes(out.item() if out.dtype == object else out.tobytes())
