"""ModelInfer and ModelStreamInfer through the sidecar: the same answers, and decisions recorded."""

from __future__ import annotations

import queue
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb

from sidecar.demo.model import load_meta
from sidecar.service import Service
from tests.grpc.conftest import TOKEN, address, grpc_sidecar
from tests.grpc_model_server import RunningModelServer
from tests.servers import http_get, wait_until

META = load_meta()
WIDTH = len(META.feature_names)
INFER = "/inference.GRPCInferenceService/ModelInfer"


def _rows(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(7)
    return rng.uniform(0, 5, size=(n, WIDTH)).astype(np.float32)


def _triton_infer(target: str, x: np.ndarray[Any, Any], **kw: Any) -> Any:
    client = triton.InferenceServerClient(target)
    inp = triton.InferInput(META.input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(META.name, [inp], **kw)


def _typed_request(x: np.ndarray[Any, Any], request_id: str = "") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=META.name, id=request_id)
    t = req.inputs.add(name=META.input_name, datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
    return req


def _decisions(svc: Service, request_id: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{svc.control_url}/decisions?request_id={request_id}", TOKEN)
    assert status == 200
    decisions: list[dict[str, Any]] = orjson.loads(body)["decisions"]
    return decisions


def test_tritonclient_answers_equal_direct_and_decisions_are_recorded(
    sidecar: Service, model_server: RunningModelServer
) -> None:
    x = _rows(3)
    direct = _triton_infer(model_server.address, x, request_id="tc-1")
    through = _triton_infer(address(sidecar), x, request_id="tc-1")
    # Field for field: the message is the model server's, byte for byte.
    assert through.get_response() == direct.get_response()
    assert through.get_response().SerializeToString() == direct.get_response().SerializeToString()
    # The bytes the model got are the client's (raw_input_contents untouched).
    wait_until(lambda: len(_decisions(sidecar, "tc-1")) == 3, what="three decisions")
    got = _decisions(sidecar, "tc-1")
    probs = direct.as_numpy("probabilities")
    for i, d in enumerate(got):
        assert d["decision_id"].endswith(f"/{i}")
        assert d["protocol"] == "v2"
        assert d["model_name"] == META.name
        assert d["features"] == pytest.approx(x[i].tolist())
        assert d["probabilities"] == pytest.approx(probs[i].tolist())
    # ... and by id, the one in the initial metadata.
    call_id = got[0]["call_id"]
    status, body = http_get(f"{sidecar.control_url}/decisions/{call_id}/1", TOKEN)
    assert status == 200
    assert orjson.loads(body)["decision"]["request_id"] == "tc-1"


def test_typed_contents_and_metadata_decision_id(
    sidecar: Service, channel: grpc.Channel, direct: grpc.Channel
) -> None:
    x = _rows(2)
    data = _typed_request(x, "typed-1").SerializeToString()
    want = direct.unary_unary(INFER)(data)
    got, call = channel.unary_unary(INFER).with_call(data, metadata=(("x-request-id", "hdr-1"),))
    assert got == want
    md = dict(call.initial_metadata())
    decision_id = md["x-decision-id"]
    assert "decision_id" not in str(pb.ModelInferResponse.FromString(got).parameters)
    wait_until(lambda: sidecar.store.get(f"{decision_id}/0") is not None, what="decision")
    d = sidecar.store.get(f"{decision_id}/0")
    assert d is not None
    # x-request-id is the request id when sent; the message's id otherwise.
    assert d.request_id == "hdr-1"
    assert d.features == pytest.approx(x[0].tolist())


def test_requested_outputs_only_probabilities(
    sidecar: Service, direct: grpc.Channel, channel: grpc.Channel
) -> None:
    req = _typed_request(_rows(1), "outs-1")
    req.outputs.add(name="probabilities")
    data = req.SerializeToString()
    assert channel.unary_unary(INFER)(data) == direct.unary_unary(INFER)(data)
    wait_until(lambda: len(_decisions(sidecar, "outs-1")) == 1, what="decision")
    d = _decisions(sidecar, "outs-1")[0]
    assert d["prediction"] in META.class_labels


def test_group_attributes_from_parameters_and_metadata_are_stripped(
    sidecar: Service, channel: grpc.Channel, model_server: RunningModelServer
) -> None:
    req = _typed_request(_rows(1), "groups-1")
    req.parameters["group_attributes"].string_param = "gender=F; age_band=30-39"
    req.parameters["keep"].int64_param = 3
    channel.unary_unary(INFER)(req.SerializeToString())
    seen = pb.ModelInferRequest.FromString(model_server.recorder.last("ModelInfer").raw)
    assert "group_attributes" not in seen.parameters
    assert seen.parameters["keep"].int64_param == 3
    wait_until(lambda: len(_decisions(sidecar, "groups-1")) == 1, what="decision")
    d = sidecar.store.get(_decisions(sidecar, "groups-1")[0]["decision_id"])
    assert d is not None and d.group_attributes == {"gender": "F", "age_band": "30-39"}

    plain = _typed_request(_rows(1), "groups-2").SerializeToString()
    channel.unary_unary(INFER)(plain, metadata=(("x-group-attributes", "gender=M"),))
    seen_call = model_server.recorder.last("ModelInfer")
    # No attribute in the message: the client's bytes went up unchanged.
    assert seen_call.raw == plain
    assert "x-group-attributes" not in seen_call.metadata
    wait_until(lambda: len(_decisions(sidecar, "groups-2")) == 1, what="decision")
    d = sidecar.store.get(_decisions(sidecar, "groups-2")[0]["decision_id"])
    assert d is not None and d.group_attributes == {"gender": "M"}


def test_an_unreadable_message_is_forwarded_and_counted(
    sidecar: Service, channel: grpc.Channel
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(INFER)(b"\xff\xff\xff")
    # The upstream's own answer to garbage, not the sidecar's.
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    _, body = http_get(f"{sidecar.control_url}/metrics")
    assert 'reason="request_protobuf"' in body.decode()


def test_decision_id_in_parameters_when_configured(model_server: RunningModelServer) -> None:
    with (
        grpc_sidecar(model_server.url, proxy={"grpc_decision_id_in_parameters": True}) as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        data = _typed_request(_rows(1), "param-1").SerializeToString()
        got, call = ch.unary_unary(INFER).with_call(data)
        response = pb.ModelInferResponse.FromString(got)
        assert (
            response.parameters["x-decision-id"].string_param
            == dict(call.initial_metadata())["x-decision-id"]
        )
        # In a stream, the parameters are where the id can go.
        stream = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        (message,) = [pb.ModelStreamInferResponse.FromString(m) for m in stream(iter([data]))]
        streamed_id = message.infer_response.parameters["x-decision-id"].string_param
        wait_until(lambda: svc.store.get(f"{streamed_id}/0") is not None, what="decision")


def test_hold_mode_answers_aborted_with_the_ticket(model_server: RunningModelServer) -> None:
    with (
        grpc_sidecar(model_server.url, review={"mode": "hold"}) as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        data = _typed_request(_rows(1), "held-1").SerializeToString()
        future = ch.unary_unary(INFER).future(data, metadata=(("x-review", "1"),))
        with pytest.raises(grpc.RpcError) as err:
            future.result()
        assert err.value.code() is grpc.StatusCode.ABORTED
        md = dict(err.value.initial_metadata())
        assert md["x-review-status"] == "held"
        ticket = md["x-review-ticket"]
        assert ticket == md["x-decision-id"] + "/0"
        assert f"ticket {ticket}" in (err.value.details() or "")
        status, body = http_get(f"{svc.control_url}/review/items/{ticket}", TOKEN)
        assert status == 200
        assert orjson.loads(body)["final"] == {
            "state": "held",
            "outcome": None,
            "status_code": None,
            "response": None,
        }


def test_model_stream_infer_through_tritonclient(
    sidecar: Service, model_server: RunningModelServer
) -> None:
    answers: dict[str, queue.Queue[Any]] = {}
    for target in (model_server.address, address(sidecar)):
        q: queue.Queue[Any] = queue.Queue()
        answers[target] = q
        client = triton.InferenceServerClient(target)
        client.start_stream(callback=lambda result, error, q=q: q.put((result, error)))
        for i in range(3):
            x = _rows(i + 1)
            inp = triton.InferInput(META.input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer(META.name, [inp], request_id=f"stream-{i}")
        got = [q.get(timeout=10) for _ in range(3)]
        client.stop_stream()
        assert all(error is None for _, error in got)
        answers[target] = [r.get_response().SerializeToString() for r, _ in got]  # type: ignore[assignment]
    assert answers[address(sidecar)] == answers[model_server.address]
    for i in range(3):
        wait_until(lambda i=i: len(_decisions(sidecar, f"stream-{i}")) == i + 1, what="decisions")


def test_reject_mode_refuses_before_forwarding_when_it_cannot_record(
    model_server: RunningModelServer,
) -> None:
    with (
        grpc_sidecar(model_server.url, decisions={"on_overload": "reject", "queue_size": 1}) as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        # The pipeline's stages are stopped so the queue stays full.
        svc.pipeline.close()
        data = _typed_request(_rows(1), "reject-1").SerializeToString()
        before = sum(1 for s in model_server.recorder.calls if s.method == "ModelInfer")
        codes = []
        for _ in range(3):
            try:
                ch.unary_unary(INFER)(data)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
                assert "decisions.on_overload = reject" in (err.details() or "")
        assert grpc.StatusCode.UNAVAILABLE in codes
        forwarded = sum(1 for s in model_server.recorder.calls if s.method == "ModelInfer") - before
        assert forwarded == codes.count(grpc.StatusCode.OK)


def test_a_held_stream_answer_is_an_error_message_not_a_model_output(
    model_server: RunningModelServer,
) -> None:
    with (
        grpc_sidecar(model_server.url, review={"mode": "hold"}) as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        stream = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        requests = [_typed_request(_rows(1), f"sh-{i}").SerializeToString() for i in range(2)]
        answers = [
            pb.ModelStreamInferResponse.FromString(m)
            for m in stream(iter(requests), metadata=(("x-review", "1"),))
        ]
        assert len(answers) == 2
        for a in answers:
            assert not a.HasField("infer_response")
            assert a.error_message.startswith("held for human review: ticket ")
        ticket = answers[0].error_message.split("ticket ")[1].split(";")[0]
        status, _ = http_get(f"{svc.control_url}/review/items/{ticket}", TOKEN)
        assert status == 200


def test_stream_requests_past_the_pending_bound_are_not_recorded_nor_mismatched(
    sidecar: Service,
) -> None:
    assert sidecar.grpc is not None and sidecar.grpc.infer is not None
    infer = sidecar.grpc.infer
    infer.max_pending = 2
    try:
        with grpc.insecure_channel(address(sidecar)) as ch:
            stream = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            requests = [_typed_request(_rows(1), f"pend-{i}").SerializeToString() for i in range(5)]
            # The model server reads nothing for a while: all five wait for their answers.
            answers = [
                pb.ModelStreamInferResponse.FromString(m)
                for m in stream(iter(requests), metadata=(("x-test-sleep", "1.5"),))
            ]
    finally:
        infer.max_pending = 1024
    # Every answer goes back unchanged ...
    assert [a.infer_response.id for a in answers] == [f"pend-{i}" for i in range(5)]
    # ... the two still waiting become decisions; the three given up on are not paired with
    # anything else, and are counted.
    for i in (3, 4):
        wait_until(lambda i=i: len(_decisions(sidecar, f"pend-{i}")) == 1, what="decision")
    assert all(_decisions(sidecar, f"pend-{i}") == [] for i in range(3))
    _, body = http_get(f"{sidecar.control_url}/metrics")
    text = body.decode()
    assert 'reason="stream_unanswered"} 3.0' in text
    assert 'reason="stream_unmatched"} 3.0' in text


def test_a_decision_that_fails_never_fails_the_call(
    sidecar: Service, channel: grpc.Channel, direct: grpc.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in deciding")

    data = _typed_request(_rows(1), "broken-1").SerializeToString()
    monkeypatch.setattr(sidecar.decider, "decide_parsed", broken)
    # Decided after the answer is written: the answer is the model's, and the connection
    # keeps serving.
    assert channel.unary_unary(INFER)(data) == direct.unary_unary(INFER)(data)
    assert channel.unary_unary(INFER)(data) == direct.unary_unary(INFER)(data)
    monkeypatch.undo()
    again = _typed_request(_rows(1), "broken-2").SerializeToString()
    channel.unary_unary(INFER)(again)
    wait_until(lambda: len(_decisions(sidecar, "broken-2")) == 1, what="decision")
    assert _decisions(sidecar, "broken-1") == []


def test_a_failure_where_the_answer_waits_ends_only_that_connection(
    model_server: RunningModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with grpc_sidecar(model_server.url, review={"mode": "hold"}) as svc:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in deciding")

        data = _typed_request(_rows(1), "broken-3").SerializeToString()
        monkeypatch.setattr(svc.decider, "decide_parsed", broken)
        with grpc.insecure_channel(address(svc)) as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(INFER)(data, timeout=10)
        # Not an answer that looks like the model's: the connection ended.
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
        monkeypatch.undo()
        with grpc.insecure_channel(address(svc)) as ch:
            assert pb.ModelInferResponse.FromString(ch.unary_unary(INFER)(data, timeout=10)).outputs
