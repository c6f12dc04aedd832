"""The Open Inference Protocol's binary tensor extension, read for decisions.

A body with an `Inference-Header-Content-Length: N` header is N bytes of JSON
followed by the raw data of every tensor whose `parameters.binary_data_size`
is set, in the order the tensors are listed (Triton's extension, the default
of `tritonclient.http` for inputs and, with `binary_data`, for outputs).
Fixed-size types are little-endian and row-major; BYTES elements are each a
4-byte little-endian length and that many bytes. Here the binary data is
decoded into each tensor's `data`, so the V2 parser reads a binary call as it
reads a JSON one; the bytes forwarded are never touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from sidecar.dataplane.protocols.base import ParseError, checked_shape

HEADER = b"inference-header-content-length"

# numpy's little-endian dtypes per V2 datatype; BF16 and BYTES are decoded by hand.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}


def header_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The JSON header's length when the body uses the binary extension (lower-case names)."""
    for name, value in headers:
        if name == HEADER:
            try:
                n = int(value.strip())
            except ValueError:
                raise ParseError("Inference-Header-Content-Length is not a number") from None
            if n < 0:
                raise ParseError("Inference-Header-Content-Length is negative")
            return n
    return None


def split(body: bytes, length: int) -> tuple[Any, memoryview]:
    """(the parsed JSON header, the binary section) of a binary-extension body."""
    if length > len(body):
        raise ParseError(f"JSON header of {length} bytes in a body of {len(body)}")
    view = memoryview(body)
    try:
        header = orjson.loads(view[:length])
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"JSON header: {exc}") from None
    return header, view[length:]


def fill(tensors: Any, data: memoryview) -> None:
    """Decode the binary section into the `data` of each tensor that declares a size."""
    if not isinstance(tensors, list):
        raise ParseError("'inputs' / 'outputs' must be a list of tensors")
    offset = 0
    for t in tensors:
        if not isinstance(t, dict):
            raise ParseError("each tensor must be a JSON object")
        params = t.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        if type(size) is not int or size < 0 or offset + size > len(data):
            raise ParseError(f"tensor {t.get('name')!r}: binary_data_size {size!r} out of bounds")
        t["data"] = decode(t, data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ParseError(f"{len(data) - offset} bytes of binary data belong to no tensor")


def decode(t: dict[str, Any], raw: memoryview) -> list[Any]:
    """One tensor's raw bytes as its flat `data` list (the gRPC raw contents use the same layout)."""
    dtype_name = t.get("datatype")
    _, n = checked_shape(t.get("name"), t.get("shape"))
    if dtype_name == "BYTES":
        return _bytes_elements(t, raw, n)
    dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise ParseError(f"tensor {t.get('name')!r}: unknown datatype {dtype_name!r}")
    # The declared shape is checked against the bytes before anything is allocated.
    if n * dtype.itemsize != len(raw):
        raise ParseError(
            f"tensor {t.get('name')!r}: shape needs {n * dtype.itemsize} bytes, got {len(raw)}"
        )
    values = np.frombuffer(raw, dtype=dtype)
    if dtype_name == "BF16":
        # bfloat16 is the upper half of a float32.
        values = (values.astype(np.uint32) << 16).view(np.float32)
    out: list[Any] = values.tolist()
    return out


def _bytes_elements(t: dict[str, Any], raw: memoryview, n: int) -> list[Any]:
    # Each element takes at least its 4-byte length: a count past that is a lie.
    if n * 4 > len(raw):
        raise ParseError(f"tensor {t.get('name')!r}: {n} BYTES elements in {len(raw)} bytes")
    out: list[Any] = []
    pos, end = 0, len(raw)
    data = raw.tobytes()
    for _ in range(n):
        if pos + 4 > end:
            raise ParseError(f"tensor {t.get('name')!r}: BYTES element past the end")
        size = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if pos + size > end:
            raise ParseError(f"tensor {t.get('name')!r}: BYTES element past the end")
        try:
            out.append(data[pos : pos + size].decode())
        except UnicodeDecodeError:
            raise ParseError(f"tensor {t.get('name')!r}: BYTES element is not UTF-8") from None
        pos += size
    if pos != end:
        raise ParseError(f"tensor {t.get('name')!r}: {end - pos} bytes after the BYTES elements")
    return out
