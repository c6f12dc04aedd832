"""What one client may hold on the gRPC listener, each pushed past: connections
(`proxy.grpc_max_connections`), time to send the preface (`proxy.header_timeout_s`), idle
time (`proxy.idle_timeout_s`), and bytes queued toward a client that never reads. Past each:
a clean refusal or close, no upstream connection spent, and the listener serves the others."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from sidecar.dataplane.grpc import frames as f
from sidecar.dataplane.grpc import tap
from sidecar.dataplane.grpc.tap import MAX_TABLE
from sidecar.service import Service
from tests.grpc.conftest import address, grpc_sidecar
from tests.grpc.test_decisions import _decisions, _rows, _typed_request
from tests.grpc.test_tap_limits import ECHO, Raw, _message, _request
from tests.grpc_model_server import RunningModelServer
from tests.servers import http_get, wait_until

UNAVAILABLE = str(grpc.StatusCode.UNAVAILABLE.value[0]).encode()


class _CountingRelay:
    """A TCP relay in front of the model server that counts the connections it is given:
    how many upstream connections the tap opened."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            up = socket.create_connection(self._target)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def relay(model_server: RunningModelServer) -> Iterator[_CountingRelay]:
    r = _CountingRelay(model_server.address)
    yield r
    r.close()


def _closed(svc: Service, reason: str) -> float:
    _, body = http_get(f"{svc.control_url}/metrics")
    line = f'sidecar_grpc_connections_closed_total{{reason="{reason}"}} '
    for text in body.decode().splitlines():
        if text.startswith(line):
            return float(text[len(line) :])
    raise AssertionError(f"no {line!r} in /metrics")


def _served(target: str) -> bool:
    with grpc.insecure_channel(target) as ch:
        try:
            return bool(ch.unary_unary(ECHO.decode())(b"ok", timeout=10) == b"ko")
        except grpc.RpcError:
            return False


def test_a_connection_past_the_limit_is_refused_without_an_upstream_one(
    relay: _CountingRelay,
) -> None:
    with grpc_sidecar(relay.url, proxy={"grpc_max_connections": 2}) as svc:
        target = address(svc)
        held = [Raw(target).preface(), Raw(target).preface()]
        for raw in held:
            assert raw.call(1, b"ab")[b"data"] == _message(b"ba")
        assert relay.accepted == 2
        # A grpcio client on a third connection: the call fails UNAVAILABLE naming the key.
        with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(ECHO.decode())(b"x", timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "proxy.grpc_max_connections" in (err.value.details() or "")
        # And a tritonclient one.
        with pytest.raises(InferenceServerException) as triton_err:
            triton.InferenceServerClient(target).is_server_ready()
        assert triton_err.value.status() == "StatusCode.UNAVAILABLE"
        assert "proxy.grpc_max_connections" in (triton_err.value.message() or "")
        # On the wire: the stream answered trailers-only, then GOAWAY(NO_ERROR) and close.
        third = Raw(target).preface()
        got = third.call(1, b"x")
        assert got[b"grpc-status"] == UNAVAILABLE
        assert b"more than 2 gRPC connections" in got[b"grpc-message"]
        assert third.goaway() == f.NO_ERROR
        third.close()
        assert relay.accepted == 2  # no refused connection reached the upstream
        assert _closed(svc, "max_connections") == 3
        # Once one of the two goes, a new connection is served.
        held.pop().close()
        wait_until(lambda: _served(target), what="a connection admitted again")
        held[0].close()


def test_a_client_that_sends_no_preface_is_closed_and_never_costs_an_upstream_connection(
    relay: _CountingRelay,
) -> None:
    with grpc_sidecar(relay.url, proxy={"header_timeout_s": 0.4}) as svc:
        target = address(svc)
        silent = Raw(target)  # connects, sends nothing
        half = Raw(target)
        half.send(f.PREFACE[:10])  # part of the preface
        no_settings = Raw(target)
        no_settings.send(f.PREFACE)  # the magic, never its SETTINGS frame
        for raw in (silent, half, no_settings):
            assert raw.goaway() == f.PROTOCOL_ERROR
            raw.close()
        assert relay.accepted == 0
        assert _closed(svc, "preface_timeout") == 3
        # The preface's first frame must be SETTINGS: anything else is refused at once.
        wrong = Raw(target)
        wrong.send(f.PREFACE + f.frame(f.PING, 0, 0, b"12345678"))
        assert wrong.goaway() == f.PROTOCOL_ERROR
        wrong.close()
        assert relay.accepted == 0
        # A client that sends its preface is served (and its upstream connection opened).
        assert _served(target)
        assert relay.accepted == 1


def test_an_idle_connection_gets_goaway_and_clients_reconnect(relay: _CountingRelay) -> None:
    with grpc_sidecar(relay.url, proxy={"idle_timeout_s": 0.4}) as svc:
        target = address(svc)
        raw = Raw(target).preface()
        # A call that lasts past the idle time: a connection with a stream open is not idle.
        got = raw.call(1, b"ab", (b"x-test-sleep", b"1.2"))
        assert got[b"grpc-status"] == b"0" and got[b"data"] == _message(b"ba")
        # Then, with no stream open, GOAWAY(NO_ERROR) naming the last stream, and close.
        goaway = next(p for t, _, _, p in raw.frames() if t == f.GOAWAY)
        assert f.u32(goaway) == 1 and f.u32(goaway, 4) == f.NO_ERROR
        assert b"proxy.idle_timeout_s" in goaway[8:]
        assert raw.goaway() == -1  # nothing more, the connection closed
        raw.close()
        # A grpcio client reconnects on its own after the GOAWAY: both calls succeed.
        with grpc.insecure_channel(target) as ch:
            echo = ch.unary_unary(ECHO.decode())
            assert echo(b"12", timeout=10) == b"21"
            before = _closed(svc, "idle")
            wait_until(lambda: _closed(svc, "idle") > before, what="the channel's idle close")
            assert echo(b"34", timeout=10) == b"43"
        # tritonclient the same.
        client = triton.InferenceServerClient(target)
        assert client.is_server_ready()
        before = _closed(svc, "idle")
        wait_until(lambda: _closed(svc, "idle") > before, what="tritonclient's idle close")
        assert client.is_server_ready()
        client.close()
        assert relay.accepted == 5


def _flood(raw: Raw, chunk: Callable[[int], bytes]) -> int:
    """Send `chunk(k)` for k = 0, 1, ... until the tap stops reading (the socket stays full)
    or 256 MiB went; the bytes sent."""
    raw.sock.setblocking(False)
    k, sent = 0, 0
    while sent < 256 << 20:
        view = memoryview(chunk(k))
        k += 1
        while view:
            try:
                n = raw.sock.send(view)
            except BlockingIOError:
                if not select.select([], [raw.sock], [], 2.0)[1]:
                    break
                continue
            view = view[n:]
            sent += n
        if view:
            break
    return sent


def _stopped_reading(svc: Service) -> None:
    (conn,) = svc.grpc.connections() if svc.grpc else ()
    assert conn.transport is not None
    wait_until(lambda: not conn.transport.is_reading(), what="the tap to stop reading")
    # What it queued toward the client: about the high-water mark, not what was asked.
    assert conn.transport.get_write_buffer_size() < 4 << 20


def test_a_client_that_never_reads_stops_being_read(model_server: RunningModelServer) -> None:
    # One call at once: every further stream is refused by the tap itself (trailers-only and
    # RST_STREAM, ~5x the bytes of the fully indexed HEADERS asking for it). A client that
    # asks and never reads must not make the tap queue those answers without bound.
    with grpc_sidecar(model_server.url, proxy={"grpc_max_concurrent_rpcs": 1}) as svc:
        raw = Raw(address(svc)).preface()
        raw.send(f.header_block(1, raw.enc.encode(_request()), False))  # held open
        block = raw.enc.encode(_request())
        sent = _flood(
            raw,
            lambda k: b"".join(
                f.header_block(3 + 2000 * k + 2 * j, block, True) for j in range(1000)
            ),
        )
        _stopped_reading(svc)
        assert sent < 256 << 20


def test_a_ping_flood_from_a_client_that_never_reads_stops_being_read(
    model_server: RunningModelServer,
) -> None:
    # The tap answers PINGs itself: their ACKs queue toward the client as any answer of its own.
    with grpc_sidecar(model_server.url) as svc:
        raw = Raw(address(svc)).preface()
        sent = _flood(raw, lambda k: f.frame(f.PING, 0, 0, b"pingping") * 4096)
        _stopped_reading(svc)
        assert sent < 256 << 20
        assert _served(address(svc))
        raw.close()
        assert _served(address(svc))


def test_stream_requests_past_the_pending_bytes_are_not_recorded(
    model_server: RunningModelServer,
) -> None:
    # A ModelStreamInfer request is kept until its answer comes, to be decided with it: the
    # bytes one stream may keep are bounded too, not only their number.
    with grpc_sidecar(model_server.url) as svc:
        assert svc.grpc is not None and svc.grpc.infer is not None
        requests = [_typed_request(_rows(1), f"big-{i}").SerializeToString() for i in range(5)]
        # Room for two requests' bytes (their number alone would let all five wait).
        svc.grpc.infer.max_pending_bytes = 2 * len(requests[0]) + len(requests[0]) // 2
        with grpc.insecure_channel(address(svc)) as ch:
            stream = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            answers = [
                pb.ModelStreamInferResponse.FromString(m)
                for m in stream(iter(requests), metadata=(("x-test-sleep", "1.5"),))
            ]
        assert [a.infer_response.id for a in answers] == [f"big-{i}" for i in range(5)]
        for i in (3, 4):
            wait_until(lambda i=i: len(_decisions(svc, f"big-{i}")) == 1, what="decision")
        assert all(_decisions(svc, f"big-{i}") == [] for i in range(3))
        _, body = http_get(f"{svc.control_url}/metrics")
        assert 'reason="stream_unanswered"} 3.0' in body.decode()


def test_an_hpack_table_past_what_the_tap_keeps_is_a_compression_error(
    sidecar: Service, channel: grpc.Channel
) -> None:
    # The tap keeps a mirror of each peer's HPACK table: at most MAX_TABLE octets per
    # direction (it caps SETTINGS_HEADER_TABLE_SIZE it forwards at that), whatever a client
    # then claims in a table size update.
    assert MAX_TABLE == 65_536
    at_limit = b"\x3f\xe1\xff\x03"  # size update to 65,536
    past = b"\x3f\xe2\xff\x03"  # 65,537
    raw = Raw(address(sidecar)).preface()
    raw.send(f.header_block(1, at_limit + raw.enc.encode(_request()), False))
    raw.send(f.frame(f.DATA, f.END_STREAM, 1, _message(b"ab")))
    assert raw.answer(1)[b"data"] == _message(b"ba")
    raw.close()
    raw = Raw(address(sidecar)).preface()
    raw.send(f.header_block(1, past + raw.enc.encode(_request()), True))
    assert raw.goaway() == f.COMPRESSION_ERROR
    raw.close()
    assert _served(address(sidecar))


def test_a_unary_call_a_client_never_finishes_ends_at_the_timeout_and_frees_its_slot(
    model_server: RunningModelServer,
) -> None:
    # Streams count against proxy.grpc_max_concurrent_rpcs until they end: a protocol unary
    # call whose request never ends is ended by the tap at proxy.timeout_s, so it cannot
    # hold its slot (a streaming call may: it is held as long as the client keeps it open).
    proxy = {"grpc_max_concurrent_rpcs": 1, "timeout_s": 0.5}
    with grpc_sidecar(model_server.url, proxy=proxy) as svc:
        raw = Raw(address(svc)).preface()
        path = b"/inference.GRPCInferenceService/ModelReady"
        raw.send(f.header_block(1, raw.enc.encode(_request(path)), False))  # no END_STREAM
        got = raw.answer(1)
        assert got[b"grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]).encode()
        assert b"proxy.timeout_s" in got[b"grpc-message"]
        # The slot is free again: the next call, on the same connection, is served.
        assert raw.call(3, b"ab")[b"data"] == _message(b"ba")
        raw.close()


def test_past_the_refusals_answered_at_once_connections_are_closed_unanswered(
    relay: _CountingRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refused connection is answered for a second (so its client learns why); a flood of
    # them must not hold sockets that long: past _MAX_REFUSING at once they are closed unread.
    monkeypatch.setattr(tap, "_MAX_REFUSING", 2)
    with grpc_sidecar(relay.url, proxy={"grpc_max_connections": 1}) as svc:
        target = address(svc)
        admitted = Raw(target).preface()
        assert admitted.call(1, b"ab")[b"data"] == _message(b"ba")
        answered = [Raw(target), Raw(target)]
        wait_until(lambda: _closed(svc, "max_connections") == 2, what="two refused")
        dropped = Raw(target)
        assert list(dropped.frames()) == []  # closed without a byte
        for raw in answered:
            # No preface from these clients: the tap's GOAWAY when its second is up.
            assert raw.goaway() == f.NO_ERROR
        assert _closed(svc, "max_connections") == 3
        assert relay.accepted == 1
        for raw in (admitted, dropped, *answered):
            raw.close()


def test_a_client_sending_before_the_upstream_is_up_stops_being_read() -> None:
    # A TLS upstream whose handshake never completes (the socket listens, nothing answers
    # the ClientHello): the tap's upstream connection is not up for the whole connect
    # timeout. What the client sends meanwhile is held, up to tap._EARLY_LIMIT and one read
    # past it, and the client is not read until the upstream is up (or given up on).
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        up = f"https://127.0.0.1:{mute.getsockname()[1]}"
        with grpc_sidecar(up, proxy={"connect_timeout_s": 3.0}) as svc:
            raw = Raw(address(svc)).preface()
            block = raw.enc.encode(_request())
            sent = _flood(
                raw,
                lambda k: b"".join(
                    f.header_block(1 + 2000 * k + 2 * j, block, True) for j in range(1000)
                ),
            )
            (conn,) = svc.grpc.connections() if svc.grpc else ()
            assert conn.transport is not None
            wait_until(lambda: not conn.transport.is_reading(), what="the tap to stop reading")
            assert conn._early is not None  # still waiting for the upstream
            assert 0 < conn._early_len <= tap._EARLY_LIMIT + (256 << 10)
            assert sent > tap._EARLY_LIMIT  # the client did push past it
            # Another client is not held up by it: once the connect timeout passes, it is
            # told the upstream is unreachable, as the first one is.
            with grpc.insecure_channel(address(svc)) as ch, pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(ECHO.decode())(b"ab", timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "unreachable" in (err.value.details() or "")
            raw.close()
