"""Request bodies for the benchmarks: distinct demo-model rows, so caches see realistic keys."""

from __future__ import annotations

import math

import orjson

from loadtests.loadgen import build_request
from sidecar.demo.data import generate

V2_PATH = "/v2/models/credit/infer"


def _row(values: list[float]) -> list[float | None]:
    # JSON has no NaN: a missing value travels as null, which the model server reads as NaN.
    return [None if math.isnan(v) else round(v, 4) for v in values]


def v2_bodies(n: int, seed: int = 11) -> list[bytes]:
    """`n` single-row V2 infer bodies drawn from the demo data."""
    data = generate(n, seed=seed)
    return [
        orjson.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": _row(row)}
                ]
            }
        )
        for row in data.features.tolist()
    ]


def v2_requests(host: str, port: int, n: int = 256, seed: int = 11) -> list[bytes]:
    """Raw V2 requests carrying the row's group attributes in `x-group-attributes`."""
    data = generate(n, seed=seed)
    return [
        build_request(
            host,
            port,
            V2_PATH,
            body,
            [("x-group-attributes", f"gender={g}; age_band={a}")],
        )
        for body, g, a in zip(v2_bodies(n, seed), data.gender, data.age_band, strict=True)
    ]
