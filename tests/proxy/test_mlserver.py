"""A real MLServer 1.7 behind the sidecar: real clients get the model server's own answers, and decisions.

MLServer does not take the binary tensor extension, so tritonclient.http talks
JSON to it (binary_data=False); tests/proxy/test_binary_tensors.py covers binary
tensors against a Triton-like route.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from sidecar.demo.data import generate
from sidecar.demo.model import META_PATH, load_meta
from sidecar.service import Service
from tests.mlserver import MLServer, running_mlserver
from tests.servers import running_sidecar

META = load_meta(META_PATH)


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    with running_mlserver(Path(tmp_path_factory.mktemp("mlserver"))) as m:
        yield m


@pytest.fixture(scope="module")
def sidecar(mlserver: MLServer) -> Iterator[Service]:
    with running_sidecar(
        mlserver.http_url,
        model={
            "feature_names": list(META.feature_names),
            "class_labels": list(META.class_labels),
        },
        sampling={"rate": 0.0},
    ) as svc:
        yield svc


def _rows(n: int) -> np.ndarray:
    # JSON has no NaN (the demo data marks missing values with it).
    return np.nan_to_num(np.asarray(generate(n, seed=7).features, dtype=np.float32))


def _post(url: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    p = urlsplit(url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
    c.request("POST", path, body=body, headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def test_v2_json_answers_are_mlservers_bytes_and_become_decisions(
    mlserver: MLServer, sidecar: Service
) -> None:
    x = _rows(3)
    body = orjson.dumps(
        {
            "id": "mls-1",
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ],
        }
    )
    path = f"/v2/models/{mlserver.model}/infer"
    direct = _post(mlserver.http_url, path, body)
    proxied = _post(sidecar.proxy_url, path, body)
    assert direct[0] == proxied[0] == 200
    assert proxied[2] == direct[2]
    call_id = proxied[1]["x-decision-id"]

    assert sidecar.pipeline.drain(5)
    found, _ = sidecar.store.by_request("mls-1")
    assert [d.decision_id for d in found] == [f"{call_id}/{i}" for i in range(3)]
    answer = orjson.loads(direct[2])
    probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")["data"]
    for d in found:
        assert d.features == pytest.approx(x[d.row].tolist())
        assert d.probabilities == pytest.approx(probabilities[2 * d.row : 2 * d.row + 2])
        assert d.confidence == pytest.approx(max(d.probabilities))
        assert d.model_name == mlserver.model and d.protocol == "v2"


def test_tritonclient_http_through_the_sidecar_equals_direct(
    mlserver: MLServer, sidecar: Service
) -> None:
    x = _rows(4)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]

    def call(url: str) -> triton.InferResult:
        client = triton.InferenceServerClient(url=urlsplit(url).netloc)
        try:
            assert client.is_server_ready() and client.is_model_ready(mlserver.model)
            return client.infer(mlserver.model, [inp], outputs=outs, request_id="tc-7")
        finally:
            client.close()

    direct, via = call(mlserver.http_url), call(sidecar.proxy_url)
    assert via.get_response() == direct.get_response()
    for name in ("label", "probabilities"):
        assert np.array_equal(via.as_numpy(name), direct.as_numpy(name))
    assert sidecar.pipeline.drain(5)
    found, _ = sidecar.store.by_request("tc-7")
    assert [d.row for d in found] == [0, 1, 2, 3]
    labels = direct.as_numpy("label").ravel().tolist()
    assert [d.prediction for d in found] == labels
