"""Every limit of the frame tap's parser, driven past it with raw HTTP/2: a clean GOAWAY (or a
stream's RESOURCE_EXHAUSTED), and the listener keeps serving every other connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
from hpack import Decoder as RefDecoder
from hpack import Encoder as RefEncoder

from sidecar.dataplane.grpc import frames as f
from sidecar.dataplane.grpc.tap import MAX_FRAME
from sidecar.service import Service
from tests.grpc.conftest import address

ECHO = b"/test.Echo/Unary"
# proxy.max_header_bytes' default: the header block and list limit.
MAX_HEADER_BYTES = 60 * 1024


def _request(path: bytes = ECHO, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"sidecar"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]


def _message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


class Raw:
    """A bare HTTP/2 client connection: frames in, frames out."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.enc = RefEncoder()
        self.dec = RefDecoder()
        self._buf = b""

    def preface(self) -> Raw:
        self.send(f.PREFACE + f.settings([]))
        return self

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames(self) -> Iterator[tuple[int, int, int, bytes]]:
        """Frames as they come, until the tap closes the connection."""
        while True:
            while len(self._buf) < 9 or len(self._buf) < 9 + int.from_bytes(self._buf[:3], "big"):
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return
                self._buf += chunk
            length = int.from_bytes(self._buf[:3], "big")
            ftype, flags = self._buf[3], self._buf[4]
            sid = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            payload = self._buf[9 : 9 + length]
            self._buf = self._buf[9 + length :]
            if ftype == f.SETTINGS and not flags & f.ACK:
                self.send(f.frame(f.SETTINGS, f.ACK, 0))
            yield ftype, flags, sid, payload

    def goaway(self) -> int:
        """The GOAWAY's error code (the connection must then close)."""
        code = -1
        for ftype, _, _, payload in self.frames():
            if ftype == f.GOAWAY:
                code = f.u32(payload, 4)
        return code

    def call(
        self, sid: int, body: bytes, *extra: tuple[bytes, bytes], path: bytes = ECHO
    ) -> dict[bytes, bytes]:
        """One unary call (echo unless `path`): every header the stream got back, trailers
        included, and its DATA."""
        self.send(f.header_block(sid, self.enc.encode(_request(path, *extra)), False))
        self.send(f.frame(f.DATA, f.END_STREAM, sid, _message(body)))
        return self.answer(sid)

    def answer(self, sid: int) -> dict[bytes, bytes]:
        got: dict[bytes, bytes] = {}
        for ftype, flags, stream, payload in self.frames():
            if stream != sid:
                continue
            if ftype == f.HEADERS:
                got.update((bytes(k), bytes(v)) for k, v in self.dec.decode(payload, raw=True))
            elif ftype == f.DATA:
                got[b"data"] = got.get(b"data", b"") + payload
            if flags & f.END_STREAM or ftype == f.RST_STREAM:
                return got
        raise AssertionError("connection closed before the stream ended")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(sidecar: Service) -> Iterator[Raw]:
    conn = Raw(address(sidecar))
    yield conn
    conn.close()


def _still_serves(channel: grpc.Channel) -> None:
    assert channel.unary_unary(ECHO.decode())(b"ok", timeout=10) == b"ko"


def test_a_plain_call_over_raw_http2(raw: Raw) -> None:
    got = raw.preface().call(1, b"abc", (b"x-foo", b"bar"))
    assert got[b"grpc-status"] == b"0"
    assert got[b"data"] == _message(b"cba")
    # A second stream on the same connection, its headers now indexed by the encoder.
    assert raw.call(3, b"xy", (b"x-foo", b"bar"))[b"data"] == _message(b"yx")


def test_a_bad_preface_is_a_protocol_error(raw: Raw, channel: grpc.Channel) -> None:
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.goaway() == f.PROTOCOL_ERROR
    _still_serves(channel)


def test_a_frame_past_the_limit_is_a_frame_size_error(raw: Raw, channel: grpc.Channel) -> None:
    raw.preface()
    raw.send(f.head(MAX_FRAME + 1, f.DATA, 0, 1))
    assert raw.goaway() == f.FRAME_SIZE_ERROR
    _still_serves(channel)


def test_a_continuation_flood_is_cut_off(raw: Raw, channel: grpc.Channel) -> None:
    raw.preface()
    block = raw.enc.encode(_request())
    raw.send(f.frame(f.HEADERS, 0, 1, block))
    chunk = raw.enc.encode([(b"x-pad", b"p" * 16_000)])
    try:
        # Never END_HEADERS: the tap must not buffer without bound.
        for _ in range(MAX_HEADER_BYTES // len(chunk) + 2):
            raw.send(f.frame(f.CONTINUATION, 0, 1, chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert raw.goaway() == f.ENHANCE_YOUR_CALM
    _still_serves(channel)


def test_a_header_list_past_the_limit_refuses_that_stream_only(raw: Raw) -> None:
    raw.preface()
    # 3,000 octets into the table (a block well under the limit) ...
    got = raw.call(1, b"a", (b"x-big", b"b" * 3000))
    assert got[b"grpc-status"] == b"0"
    # ... then 30 one-octet references to it: a 30-octet block, a 90 KB list.
    block = raw.enc.encode(_request())
    entries = [bytes(name) for name, _ in raw.enc.header_table.dynamic_entries]
    index = 62 + entries.index(b"x-big")
    raw.send(f.header_block(3, block + bytes([0x80 | index]) * 30, True))
    got = raw.answer(3)
    assert got[b"grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]).encode()
    assert b"proxy.max_header_bytes" in got[b"grpc-message"]
    # The connection's HPACK state is intact: the next call on it is served.
    assert raw.call(5, b"xy")[b"data"] == _message(b"yx")


def test_hpack_no_peer_could_decode_is_a_compression_error(raw: Raw, channel: grpc.Channel) -> None:
    raw.preface()
    raw.send(f.header_block(1, b"\xbf", True))  # index 63: past an empty table
    assert raw.goaway() == f.COMPRESSION_ERROR
    _still_serves(channel)


def test_a_reused_stream_id_is_a_protocol_error(raw: Raw) -> None:
    raw.preface()
    assert raw.call(3, b"a")[b"grpc-status"] == b"0"
    raw.send(f.header_block(1, raw.enc.encode(_request()), True))
    assert raw.goaway() == f.PROTOCOL_ERROR


def test_an_interrupted_header_block_is_a_protocol_error(raw: Raw) -> None:
    raw.preface()
    raw.send(f.frame(f.HEADERS, 0, 1, raw.enc.encode(_request())))
    raw.send(f.frame(f.DATA, 0, 1, _message(b"x")))
    assert raw.goaway() == f.PROTOCOL_ERROR


def test_a_message_past_the_limit_gives_the_window_back(raw: Raw) -> None:
    # 8 MiB messages are the default limit: one a little past it, sent in 16 KB frames, is
    # refused at its prefix; the rest of its frames are dropped and given back to the
    # client's connection window, so calls after it on the connection still go through.
    raw.preface()
    raw.send(f.settings([(f.INITIAL_WINDOW_SIZE, 1 << 24)]))
    raw.send(f.header_block(1, raw.enc.encode(_request()), False))
    head = b"\x00" + (8 * 1024 * 1024 + 1).to_bytes(4, "big")
    raw.send(f.frame(f.DATA, 0, 1, head + b"x" * 16_000))
    got = raw.answer(1)
    assert got[b"grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]).encode()
    assert b"proxy.grpc_max_message_bytes" in got[b"grpc-message"]
    # 70 KB more on the refused stream (in flight, as far as the client knows): dropped.
    for _ in range(5):
        raw.send(f.frame(f.DATA, 0, 1, b"x" * 14_000))
    # Every dropped frame comes back as connection window (the upstream never saw them, so
    # it would never give them back itself; its own WINDOW_UPDATEs are of other sizes).
    given = 0
    for ftype, _, sid, payload in raw.frames():
        if ftype == f.WINDOW_UPDATE and sid == 0 and f.u32(payload) == 14_000:
            given += 1
            if given == 5:
                break
    assert given == 5
    # One frame within the model server's SETTINGS_MAX_FRAME_SIZE (16 KiB until it raises it):
    # a 60 KB frame was the test client's own protocol error, which the upstream answers by
    # closing the connection, so the call failed whenever grpc-core had not raised it yet.
    assert raw.call(3, b"x" * 16_000)[b"grpc-status"] == b"0"
