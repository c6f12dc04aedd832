"""A real MLServer 1.7 on its gRPC port behind the sidecar's gRPC listener.

tritonclient.grpc's answers through the sidecar equal MLServer's own, field for
field and byte for byte; the calls become decisions, found by the request's id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton

from sidecar.service import Service
from tests.grpc.conftest import TOKEN, address, grpc_sidecar
from tests.mlserver import MLServer, running_mlserver
from tests.servers import http_get, wait_until


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    with running_mlserver(Path(tmp_path_factory.mktemp("mlserver-grpc"))) as m:
        yield m


@pytest.fixture(scope="module")
def mls_sidecar(mlserver: MLServer) -> Iterator[Service]:
    with grpc_sidecar(f"http://{mlserver.grpc_target}", sampling={"rate": 0.0}) as svc:
        yield svc


def _infer(target: str, model: str, x: np.ndarray[Any, Any], request_id: str) -> Any:
    client = triton.InferenceServerClient(target)
    try:
        assert client.is_server_ready() and client.is_model_ready(model)
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp], request_id=request_id)
    finally:
        client.close()


def test_tritonclient_grpc_through_the_sidecar_equals_mlserver(
    mlserver: MLServer, mls_sidecar: Service
) -> None:
    x = np.random.default_rng(3).uniform(0, 50, size=(4, 10)).astype(np.float32)
    direct = _infer(mlserver.grpc_target, mlserver.model, x, "mls-grpc-1")
    via = _infer(address(mls_sidecar), mlserver.model, x, "mls-grpc-1")
    assert via.get_response().SerializeToString() == direct.get_response().SerializeToString()

    def found() -> list[dict[str, Any]]:
        status, body = http_get(f"{mls_sidecar.control_url}/decisions?request_id=mls-grpc-1", TOKEN)
        assert status == 200
        decisions: list[dict[str, Any]] = orjson.loads(body)["decisions"]
        return decisions

    wait_until(lambda: len(found()) == 4, what="four decisions from MLServer's answer")
    probabilities = direct.as_numpy("probabilities")
    for d in sorted(found(), key=lambda d: d["decision_id"]):
        row = int(d["decision_id"].rsplit("/", 1)[1])
        assert d["features"] == pytest.approx(x[row].tolist())
        assert d["probabilities"] == pytest.approx(probabilities[row].tolist())
        assert d["model_name"] == mlserver.model
