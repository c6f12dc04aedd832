"""`sidecar serve` with `proxy.workers = 2` and a gRPC listener: each worker taps gRPC on
its own socket of the one port, and every decision is found through the one control port."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from sidecar.dataplane.grpc import grpc_predict_v2_pb2 as pb
from sidecar.decisions import worker_of
from sidecar.demo.model import load_meta
from tests.grpc_model_server import RunningModelServer, grpc_model_server
from tests.servers import free_port, http_get, recording_upstream
from tests.workers.test_serve_workers import TOKEN, Served, _serve, stop

META = load_meta()
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def model_server() -> Iterator[RunningModelServer]:
    with grpc_model_server() as server:
        yield server


@pytest.fixture(scope="module")
def served(model_server: RunningModelServer) -> Iterator[tuple[Served, int]]:
    state = Path(tempfile.mkdtemp(prefix="sidecar-grpc-workers-test-"))
    port = free_port()
    grpc_keys = f'grpc_listen = "127.0.0.1:{port}"\ngrpc_upstream = "{model_server.url}"\n'
    # /readyz waits for the HTTP upstream too: one that answers, though no HTTP call is made.
    with recording_upstream() as http_upstream:
        s = _serve(http_upstream.url, state, extra_proxy=grpc_keys)
        try:
            yield s, port
        finally:
            stop(s)


def _infer(port: int, request_id: str) -> tuple[bytes, str]:
    """One ModelInfer on a connection of its own (no subchannel shared between channels)."""
    req = pb.ModelInferRequest(model_name=META.name, id=request_id)
    t = req.inputs.add(name=META.input_name, datatype="FP32", shape=[1, len(META.feature_names)])
    t.contents.fp32_contents.extend([1.0] * len(META.feature_names))
    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        answer, call = ch.unary_unary(INFER).with_call(req.SerializeToString(), timeout=15)
    return answer, str(dict(call.initial_metadata())["x-decision-id"])


def test_grpc_calls_reach_both_workers_and_are_found_at_the_one_control_port(
    served: tuple[Served, int], model_server: RunningModelServer
) -> None:
    s, port = served
    ids = {}
    for i in range(40):
        answer, call_id = _infer(port, f"gw-{i}")
        assert pb.ModelInferResponse.FromString(answer).outputs
        ids[f"gw-{i}"] = call_id
    # The kernel hashes each connection to one worker's socket: both served some.
    assert {worker_of(c) for c in ids.values()} == {0, 1}
    assert len(set(ids.values())) == 40
    for request_id, call_id in ids.items():
        status, body = http_get(f"{s.control}/decisions/{call_id}/0", TOKEN)
        assert status == 200, body
        assert orjson.loads(body)["decision"]["request_id"] == request_id
        status, body = http_get(f"{s.control}/decisions?request_id={request_id}", TOKEN)
        assert status == 200
        assert [d["call_id"] for d in orjson.loads(body)["decisions"]] == [call_id]
    # The model server saw every call once.
    assert sum(1 for c in model_server.recorder.calls if c.method == "ModelInfer") == 40
