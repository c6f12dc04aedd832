"""A real Triton Inference Server behind the sidecar: tritonclient.http in binary and JSON.

Triton (PyTriton's bundled tritonserver, tests/triton.py) speaks the binary tensor
extension: the answers through the sidecar are Triton's bytes, and every call
becomes decisions, found by the request id tritonclient puts in the body.
"""

from __future__ import annotations

import http.client
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.http as triton_http

from sidecar.service import Service
from tests.servers import running_sidecar
from tests.triton import TritonServer, available, running_triton

MODES = {"binary": True, "json": False}


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonServer]:
    why = available()
    if why is not None:
        pytest.skip(why)
    with tempfile.TemporaryDirectory() as d, running_triton(Path(d)) as server:
        yield server


@pytest.fixture(scope="module")
def sidecar(triton: TritonServer) -> Iterator[Service]:
    with running_sidecar(
        triton.http_url,
        model={"class_labels": ["repaid", "default"]},
        sampling={"rate": 0.0},
    ) as svc:
        yield svc


def _post(
    url: str, path: str, body: bytes, json_size: int | None
) -> tuple[int, dict[str, str], bytes]:
    p = urlsplit(url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
    headers = {"content-type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    c.request("POST", path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


@pytest.mark.parametrize("mode", sorted(MODES))
def test_tritonclient_through_the_sidecar_to_triton(
    triton: TritonServer, sidecar: Service, mode: str
) -> None:
    binary = MODES[mode]
    x = np.array([[35.0, 52.5, -120.25], [61.0, 12.0, 0.5], [-300.0, 1.0, 2.0]], dtype=np.float32)
    inp = triton_http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [
        triton_http.InferRequestedOutput("probabilities", binary_data=binary),
        triton_http.InferRequestedOutput("label", binary_data=binary),
    ]
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        [inp], outs, request_id=f"triton-{mode}"
    )
    path = f"/v2/models/{triton.model}/infer"
    direct = _post(triton.http_url, path, body, json_size)
    proxied = _post(sidecar.proxy_url, path, body, json_size)
    assert direct[0] == proxied[0] == 200
    assert proxied[2] == direct[2]  # Triton's bytes, binary tensors included
    assert ("inference-header-content-length" in proxied[1]) == binary
    call_id = proxied[1]["x-decision-id"]

    # The client itself, through the sidecar: the same tensors as direct.
    def call(url: str) -> triton_http.InferResult:
        client = triton_http.InferenceServerClient(url=urlsplit(url).netloc)
        try:
            return client.infer(triton.model, [inp], outputs=outs, request_id=f"tc-{mode}")
        finally:
            client.close()

    own, via = call(triton.http_url), call(sidecar.proxy_url)
    for name in ("probabilities", "label"):
        assert np.array_equal(via.as_numpy(name), own.as_numpy(name))

    assert sidecar.pipeline.drain(5)
    first, _ = sidecar.store.by_request(f"triton-{mode}")
    second, _ = sidecar.store.by_request(f"tc-{mode}")
    proba = own.as_numpy("probabilities")
    for decisions in (first, second):
        assert [d.row for d in decisions] == [0, 1, 2]
        assert [d.features for d in decisions] == x.tolist()
        assert [d.probabilities for d in decisions] == proba.tolist()
        assert [d.prediction for d in decisions] == own.as_numpy("label").ravel().tolist()
    assert first[0].call_id == call_id
