"""Every RPC passes through unchanged: messages, metadata, status, deadlines, cancellation, all four shapes."""

from __future__ import annotations

import threading

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb

from sidecar.service import Service
from tests.grpc.conftest import address, grpc_sidecar
from tests.grpc_model_server import RunningModelServer
from tests.servers import free_port, http_get, recording_upstream, running_sidecar, wait_until

INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


def _unary(ch: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary(method)


def test_unknown_service_in_all_four_shapes_passes_through(channel: grpc.Channel) -> None:
    assert channel.unary_unary("/test.Echo/Unary")(b"abc") == b"cba"
    assert list(channel.unary_stream("/test.Echo/ServerStream")(b"x")) == [b"x0", b"x1", b"x2"]
    assert channel.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"])) == b"a|b|c"
    got = list(channel.stream_stream("/test.Echo/Bidi")(iter([b"a", b"bc"])))
    assert got == [b"A", b"BC"]


def test_metadata_both_ways_and_trailers(
    channel: grpc.Channel, model_server: RunningModelServer
) -> None:
    req = pb.ModelReadyRequest(name="credit").SerializeToString()
    md = (("x-foo", "bar"), ("x-bin-bin", b"\x00\x01"), ("x-group-attributes", "gender=F"))
    response, call = _unary(channel, MODEL_READY).with_call(req, metadata=md)
    assert pb.ModelReadyResponse.FromString(response).ready
    seen = model_server.recorder.last("ModelReady").metadata
    assert seen["x-foo"] == "bar"
    assert seen["x-bin-bin"] == b"\x00\x01"
    # The group-attribute channel never reaches the model.
    assert "x-group-attributes" not in seen
    assert ("x-echo-x-foo", "bar") in call.initial_metadata()
    assert ("x-trailer", "t") in call.trailing_metadata()


@pytest.mark.parametrize(
    ("code", "details"),
    [("NOT_FOUND", "no such model"), ("INVALID_ARGUMENT", "bad shape"), ("CANCELLED", "")],
)
def test_error_status_and_details_pass_through(
    channel: grpc.Channel, direct: grpc.Channel, code: str, details: str
) -> None:
    md = (("x-test-status", code), ("x-test-details", details))
    req = pb.ModelReadyRequest(name="credit").SerializeToString()
    errors = []
    for ch in (direct, channel):
        with pytest.raises(grpc.RpcError) as err:
            _unary(ch, MODEL_READY)(req, metadata=md)
        errors.append(err.value)
    assert errors[1].code() is errors[0].code() is grpc.StatusCode[code]
    assert errors[1].details() == errors[0].details()
    assert ("x-trailer", "t") in errors[1].trailing_metadata()


def test_error_status_from_a_stream_passes_through(channel: grpc.Channel) -> None:
    md = (("x-test-status", "PERMISSION_DENIED"), ("x-test-details", "no"))
    with pytest.raises(grpc.RpcError) as err:
        list(channel.stream_stream("/test.Echo/Bidi")(iter([b"a"]), metadata=md))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == "no"


def test_the_deadline_is_propagated_shortened(
    channel: grpc.Channel, model_server: RunningModelServer
) -> None:
    req = pb.ModelReadyRequest(name="credit").SerializeToString()
    _unary(channel, MODEL_READY)(req, timeout=5.0)
    left = model_server.recorder.last("ModelReady").time_remaining
    # The client's deadline, not proxy.timeout_s (grpc-timeout is sent rounded up a little).
    assert left is not None and 4.0 < left <= 5.05
    # Without a client deadline, a unary call gets proxy.timeout_s.
    _unary(channel, MODEL_READY)(req)
    left = model_server.recorder.last("ModelReady").time_remaining
    assert left is not None and 29 < left <= 30.5  # grpc-timeout is sent rounded
    # A stream without one gets none.
    list(channel.stream_stream("/test.Echo/Bidi")(iter([b"a"])))
    assert model_server.recorder.last("Bidi").time_remaining is None


def test_a_client_deadline_ends_the_upstream_call(
    channel: grpc.Channel, model_server: RunningModelServer
) -> None:
    req = pb.ModelReadyRequest(name="credit").SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        _unary(channel, MODEL_READY)(req, timeout=0.5, metadata=(("x-test-sleep", "20"),))
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: "ModelReady" in model_server.recorder.cancelled, what="upstream cancelled")


def test_a_client_cancel_cancels_the_upstream_call(
    channel: grpc.Channel, model_server: RunningModelServer
) -> None:
    before = model_server.recorder.cancelled.count("Unary")
    future = channel.unary_unary("/test.Echo/Unary").future(
        b"x", metadata=(("x-test-sleep", "20"),)
    )
    wait_until(
        lambda: any(
            s.method == "Unary" and "x-test-sleep" in s.metadata
            for s in model_server.recorder.calls
        ),
        what="call upstream",
    )
    future.cancel()
    wait_until(
        lambda: model_server.recorder.cancelled.count("Unary") > before,
        what="upstream cancelled",
    )


def test_a_stream_cancelled_by_the_client_is_cancelled_upstream(
    channel: grpc.Channel, model_server: RunningModelServer
) -> None:
    before = model_server.recorder.cancelled.count("ServerStream")
    stream = channel.unary_stream("/test.Echo/ServerStream")(
        b"x", metadata=(("x-test-sleep", "20"),)
    )
    wait_until(
        lambda: any(
            s.method == "ServerStream" and "x-test-sleep" in s.metadata
            for s in model_server.recorder.calls
        ),
        what="call upstream",
    )
    stream.cancel()
    wait_until(
        lambda: model_server.recorder.cancelled.count("ServerStream") > before,
        what="upstream cancelled",
    )


def test_an_unreachable_upstream_is_unavailable_naming_it() -> None:
    port = free_port()
    with grpc_sidecar(f"http://127.0.0.1:{port}") as svc, grpc.insecure_channel(address(svc)) as ch:
        for method in (MODEL_READY, "/test.Echo/Bidi"):
            with pytest.raises(grpc.RpcError) as err:
                if method == MODEL_READY:
                    ch.unary_unary(method)(b"", timeout=5)
                else:
                    list(ch.stream_stream(method)(iter([b"a"]), timeout=5))
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert f"upstream 127.0.0.1:{port} unreachable" in (err.value.details() or "")
        status, body = http_get(f"{svc.control_url}/readyz")
        assert status == 503 and b'"grpc_upstream":false' in body


def test_a_slow_upstream_is_deadline_exceeded_naming_the_limit(
    model_server: RunningModelServer,
) -> None:
    with (
        grpc_sidecar(model_server.url, proxy={"timeout_s": 0.5}) as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(MODEL_READY)(b"", metadata=(("x-test-sleep", "5"),))
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "within proxy.timeout_s (0.5 s)" in (err.value.details() or "")
        _, body = http_get(f"{svc.control_url}/readyz")
        assert b'"grpc_upstream":true' in body


def test_messages_past_the_size_limit_are_resource_exhausted(
    model_server: RunningModelServer,
) -> None:
    with (
        grpc_sidecar(model_server.url, proxy={"grpc_max_message_bytes": 64 * 1024}) as svc,
        grpc.insecure_channel(
            address(svc), options=[("grpc.max_receive_message_length", 1 << 24)]
        ) as ch,
    ):
        echo = ch.unary_unary("/test.Echo/Unary")
        assert echo(b"a" * 60_000) == b"a" * 60_000
        # From the client: refused by the listener.
        with pytest.raises(grpc.RpcError) as err:
            echo(b"a" * 70_000)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # From the upstream (a stream answer grows past the limit): refused by the channel.
        with pytest.raises(grpc.RpcError) as err:
            list(ch.unary_stream("/test.Echo/ServerStream")(b"a" * 65_536))
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # And the sidecar still serves.
        assert echo(b"ok") == b"ko"


def test_calls_are_counted_by_method_and_status(sidecar: Service, channel: grpc.Channel) -> None:
    channel.unary_unary("/test.Echo/Unary")(b"a")
    with pytest.raises(grpc.RpcError):
        channel.unary_unary("/test.Echo/Unary")(b"a", metadata=(("x-test-status", "ABORTED"),))
    _, body = http_get(f"{sidecar.control_url}/metrics")
    text = body.decode()
    assert 'sidecar_grpc_calls_total{code="OK",method="/test.Echo/Unary"}' in text
    assert 'sidecar_grpc_calls_total{code="ABORTED",method="/test.Echo/Unary"}' in text


def test_concurrent_calls_share_the_listener(channel: grpc.Channel) -> None:
    results: list[bytes] = []

    def call(i: int) -> None:
        results.append(channel.unary_unary("/test.Echo/Unary")(str(i).encode()))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == sorted(str(i).encode()[::-1] for i in range(20))


def test_calls_past_the_concurrency_limit_are_resource_exhausted(
    model_server: RunningModelServer,
) -> None:
    with (
        grpc_sidecar(model_server.url, proxy={"grpc_max_concurrent_rpcs": 2}) as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        echo = ch.unary_unary("/test.Echo/Unary")
        held = [
            echo.future(b"x", metadata=(("x-test-sleep", "20"), ("x-n", str(i)))) for i in range(2)
        ]
        wait_until(
            lambda: sum(1 for s in model_server.recorder.calls if "x-n" in s.metadata) >= 2,
            what="two calls upstream",
        )
        with pytest.raises(grpc.RpcError) as err:
            echo(b"y")
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for f in held:
            f.cancel()
        wait_until(lambda: _answers(echo), what="served again once the two are gone")


def _answers(echo: grpc.UnaryUnaryMultiCallable) -> bool:
    try:
        return bool(echo(b"ok") == b"ko")
    except grpc.RpcError:
        return False


def test_readyz_is_not_ready_when_the_http_upstream_is_a_grpc_port(
    model_server: RunningModelServer,
) -> None:
    # The port accepts TCP, but speaks HTTP/2 only: no HTTP/1.1 call could be answered.
    with running_sidecar(model_server.url, proxy={"connect_timeout_s": 1.0}) as svc:
        status, body = http_get(f"{svc.control_url}/readyz")
        assert status == 503 and b'"upstream":false' in body
    with recording_upstream() as up, running_sidecar(up.url) as svc:
        status, body = http_get(f"{svc.control_url}/readyz")
        assert b'"upstream":true' in body
