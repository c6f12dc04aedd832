"""Upstreams that misbehave at the HTTP/2 level: one that never answers (the tap's own deadline
ends the call and cancels it upstream), one that drops the connection mid-call (UNAVAILABLE);
and the frames the tap answers on its own hop (PING)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import grpc
import pytest
from hpack import Encoder

from sidecar.dataplane.grpc import frames as f
from tests.grpc.conftest import address, grpc_sidecar
from tests.grpc.test_decisions import INFER, _rows, _typed_request
from tests.grpc.test_tap_limits import ECHO, Raw, _message, _request
from tests.grpc_model_server import RunningModelServer
from tests.servers import wait_until

MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


class _SilentUpstream:
    """Speaks just enough HTTP/2 (SETTINGS and their ack), answers no stream; records the
    frame types it got. `hang_up`: closes the connection on the first HEADERS instead."""

    def __init__(self, hang_up: bool) -> None:
        self._hang_up = hang_up
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.types: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(f.settings([]))
            buf = b""
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                if buf.startswith(f.PREFACE):
                    buf = buf[len(f.PREFACE) :]
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    length, ftype, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                    sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload = buf[9 : 9 + length]
                    buf = buf[9 + length :]
                    self.types.append(ftype)
                    if ftype == f.SETTINGS and not flags & f.ACK:
                        conn.sendall(f.frame(f.SETTINGS, f.ACK, 0))
                    elif not self._on_frame(conn, ftype, flags, sid, payload):
                        return

    def _on_frame(
        self, conn: socket.socket, ftype: int, flags: int, sid: int, payload: bytes
    ) -> bool:
        """Any frame but SETTINGS; False hangs up."""
        return not (ftype == f.HEADERS and self._hang_up)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def _silent(hang_up: bool) -> Iterator[_SilentUpstream]:
    up = _SilentUpstream(hang_up)
    try:
        yield up
    finally:
        up.close()


def test_an_upstream_that_never_answers_is_deadline_exceeded_and_cancelled() -> None:
    # The model server here ignores grpc-timeout: only the tap's own timer can end the call.
    with (
        _silent(hang_up=False) as up,
        grpc_sidecar(f"http://127.0.0.1:{up.port}", proxy={"timeout_s": 0.5}) as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        # The client's deadline is later than proxy.timeout_s: the sidecar's answer is what
        # it sees.
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(MODEL_READY)(b"", timeout=5.0)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"upstream 127.0.0.1:{up.port} did not answer within proxy.timeout_s (0.5 s)" in (
            err.value.details() or ""
        )
        # The upstream was told to stop.
        wait_until(lambda: f.RST_STREAM in up.types, what="RST_STREAM upstream")


def test_an_upstream_that_hangs_up_mid_call_is_unavailable_naming_it() -> None:
    with (
        _silent(hang_up=True) as up,
        grpc_sidecar(f"http://127.0.0.1:{up.port}") as svc,
        grpc.insecure_channel(address(svc)) as ch,
    ):
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(MODEL_READY)(b"", timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert f"upstream 127.0.0.1:{up.port} closed the connection" in (err.value.details() or "")


def test_a_stopping_sidecar_lets_calls_in_flight_finish(model_server: RunningModelServer) -> None:
    with contextlib.ExitStack() as stack:
        svc = stack.enter_context(grpc_sidecar(model_server.url))
        ch = grpc.insecure_channel(address(svc))
        future = ch.unary_unary("/test.Echo/Unary").future(
            b"late", metadata=(("x-test-sleep", "1"), ("x-drain", "1"))
        )
        wait_until(
            lambda: any("x-drain" in s.metadata for s in model_server.recorder.calls),
            what="call upstream",
        )
    # The sidecar stopped (GOAWAY, then a grace for calls in flight) with the call upstream.
    try:
        assert future.result(timeout=10) == b"etal"
    finally:
        ch.close()


class _ReplayUpstream(_SilentUpstream):
    """Answers every stream with one recorded message (and status OK); records the
    WINDOW_UPDATEs it gets, (stream id, increment)."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self.window_updates: list[tuple[int, int]] = []
        self._encoders: dict[int, Encoder] = {}
        super().__init__(hang_up=False)

    def _on_frame(
        self, conn: socket.socket, ftype: int, flags: int, sid: int, payload: bytes
    ) -> bool:
        if ftype == f.WINDOW_UPDATE:
            self.window_updates.append((sid, f.u32(payload)))
        elif ftype == f.DATA and flags & f.END_STREAM:
            # One encoder per connection: HPACK is connection state.
            enc = self._encoders.setdefault(conn.fileno(), Encoder())
            message = b"\x00" + len(self._answer).to_bytes(4, "big") + self._answer
            head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
            conn.sendall(
                f.header_block(sid, enc.encode(head), False)
                + f.frame(f.DATA, 0, sid, message)
                + f.header_block(sid, enc.encode([(b"grpc-status", b"0")]), True)
            )
        return True


@pytest.mark.parametrize("mode", ["id_in_parameters", "hold"])
def test_where_the_answer_waits_for_its_decision_the_upstreams_windows_stay_exact(
    mode: str, direct: grpc.Channel
) -> None:
    request = _typed_request(_rows(1), "flow-1").SerializeToString()
    answer = direct.unary_unary(INFER)(request)  # the model's real answer, replayed
    sections: dict[str, dict[str, object]] = (
        {"proxy": {"grpc_decision_id_in_parameters": True}}
        if mode == "id_in_parameters"
        else {"review": {"mode": "hold"}}
    )
    up = _ReplayUpstream(answer)
    try:
        with grpc_sidecar(f"http://127.0.0.1:{up.port}", **sections) as svc:  # type: ignore[arg-type]
            raw = Raw(address(svc)).preface()
            extra = [(b"x-review", b"1")] if mode == "hold" else []
            got = raw.call(1, request, *extra, path=INFER.encode())
            sent_by_upstream = 5 + len(answer)
            received = len(got.get(b"data", b""))
            if mode == "hold":
                assert got[b"grpc-status"] == b"10" and received == 0
                # The message the client never got is given back to the upstream at once.
                wait_until(lambda: (0, sent_by_upstream) in up.window_updates, what="credit")
            else:
                assert received > sent_by_upstream  # the id made it longer
                # The client gives back what it got; the upstream must see what it sent.
                raw.send(f.window_update(0, received))
                wait_until(lambda: up.window_updates, what="WINDOW_UPDATE upstream")
                assert up.window_updates == [(0, sent_by_upstream)]
            raw.close()
    finally:
        up.close()


class _PingingUpstream(_ReplayUpstream):
    """The replay upstream that PINGs as each request's DATA ends (as grpc-go's flow-control
    probe does), then answers; records the PINGs it gets, (flags, payload)."""

    def __init__(self, answer: bytes) -> None:
        self.pings: list[tuple[int, bytes]] = []
        super().__init__(answer)

    def _on_frame(
        self, conn: socket.socket, ftype: int, flags: int, sid: int, payload: bytes
    ) -> bool:
        if ftype == f.PING:
            self.pings.append((flags, payload))
            return True
        if ftype == f.DATA and flags & f.END_STREAM:
            conn.sendall(f.frame(f.PING, 0, 0, b"upstream"))
        return super()._on_frame(conn, ftype, flags, sid, payload)


def test_a_ping_is_answered_on_its_own_hop_and_never_forwarded() -> None:
    up = _PingingUpstream(b"answer")
    try:
        with grpc_sidecar(f"http://127.0.0.1:{up.port}") as svc:
            raw = Raw(address(svc)).preface()
            # A client's PING, an unsolicited ACK (the tap sent no PING: dropped), then a call.
            raw.send(f.frame(f.PING, 0, 0, b"client!!") + f.frame(f.PING, f.ACK, 0, b"stray!!!"))
            raw.send(f.header_block(1, raw.enc.encode(_request(ECHO)), False))
            raw.send(f.frame(f.DATA, f.END_STREAM, 1, _message(b"abc")))
            pings: list[tuple[int, bytes]] = []
            data = b""
            for ftype, flags, sid, payload in raw.frames():
                if ftype == f.PING:
                    pings.append((flags, payload))
                elif ftype == f.DATA and sid == 1:
                    data += payload
                if sid == 1 and flags & f.END_STREAM:
                    break
            assert data == _message(b"answer")
            # The client's PING answered by the tap; the upstream's never reached the client.
            assert pings == [(f.ACK, b"client!!")]
            # The upstream's PING answered by the tap; the client's never reached the upstream.
            wait_until(lambda: up.pings == [(f.ACK, b"upstream")], what="the tap's PING ACK")
            raw.close()
            # A PING must be 8 octets on stream 0 (RFC 9113 6.7): else a connection error.
            for frame, code in (
                (f.frame(f.PING, 0, 0, b"seven!!"), f.FRAME_SIZE_ERROR),
                (f.frame(f.PING, 0, 1, b"stream!!"), f.PROTOCOL_ERROR),
            ):
                bad = Raw(address(svc)).preface()
                bad.send(frame)
                assert bad.goaway() == code
                bad.close()
            assert up.pings == [(f.ACK, b"upstream")]
    finally:
        up.close()
