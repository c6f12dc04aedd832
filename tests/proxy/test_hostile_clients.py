"""Hostile and broken clients against the real data plane (README, "Data-plane limits").

Each test holds its hostile connection open while a normal inference call goes
through the proxy and the control plane's /healthz answers (`_others_answer`):
no client may hurt the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from sidecar.config import ConfigError, load_settings
from sidecar.service import Service
from tests.servers import RecordingUpstream, free_port, http_get, read_until, running_sidecar

V2 = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'
V2_OUT = b'{"outputs":[{"name":"probabilities","shape":[1,2],"datatype":"FP32","data":[0.4,0.6]}]}'
INFER = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (
    len(V2),
    V2,
)
FAST = {"header_timeout_s": 0.4, "body_timeout_s": 0.4}


def _connect(url: str, timeout_s: float = 10.0) -> socket.socket:
    p = urlsplit(url)
    assert p.hostname is not None and p.port is not None
    return socket.create_connection((p.hostname, p.port), timeout=timeout_s)


def _answered(s: socket.socket, ending: bytes) -> bool:
    return read_until(s, ending).endswith(ending)


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def _status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12])


def _responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split a byte stream of Content-Length framed answers."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get(b"content-length", b"0"))
        out.append((int(lines[0][9:12]), headers, rest[:n]))
        data = rest[n:]
    return out


def _others_answer(svc: Service) -> None:
    """A normal inference call through the proxy, and the control plane's /healthz, both answer."""
    s = _connect(svc.proxy_url)
    s.sendall(INFER.replace(b"host: x\r\n", b"host: x\r\nconnection: close\r\n"))
    [(status, headers, body)] = _responses(_read_until_closed(s))
    s.close()
    assert (status, body) == (200, V2_OUT)
    assert b"x-decision-id" in headers
    assert http_get(svc.control_url + "/healthz")[0] == 200


def _refused(svc: Service, data: bytes, send_in_thread: bool = False) -> bytes:
    """Send `data`, check the others still answer, and return everything read until the close."""
    s = _connect(svc.proxy_url)
    if send_in_thread:

        def send() -> None:
            with contextlib.suppress(OSError):  # the server stops reading and closes: expected
                s.sendall(data)

        t = threading.Thread(target=send, daemon=True)
        t.start()
    else:
        s.sendall(data)
    _others_answer(svc)
    out = _read_until_closed(s)
    s.close()
    return out


@pytest.fixture
def upstream(upstream: RecordingUpstream) -> RecordingUpstream:
    @upstream.route("/v2/models/m/infer")
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=V2_OUT, content_type="application/json")

    @upstream.route("/echo")
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=request["body"] or b"-")

    return upstream


# -- 1. h2c upgrade offers ----------------------------------------------------------------


def test_h2c_offers_are_ignored_and_served_over_http11(upstream: RecordingUpstream) -> None:
    offer = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    with running_sidecar(upstream.url) as svc:
        s = _connect(svc.proxy_url)
        # A GET offer, then (on the same connection) a POST offer with a body, then a plain call.
        s.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\n" + offer + b"\r\n")
        first = read_until(s, b"\r\n\r\n-")
        assert _status(first) == 200 and first.endswith(b"\r\n\r\n-")
        _others_answer(svc)
        s.sendall(INFER.replace(b"host: x\r\n", b"host: x\r\n" + offer))
        [(status, headers, body)] = _responses(_read_until_closed(s))
        s.close()
        # A chunked body after an h2c offer reaches the upstream whole.
        chunked = _refused(
            svc,
            b"POST /echo HTTP/1.1\r\nhost: x\r\n" + offer + b"transfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        # Other upgrades are not proxied.
        ws = _refused(
            svc,
            b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
    assert (status, body) == (200, V2_OUT) and b"x-decision-id" in headers
    assert _status(chunked) == 200 and chunked.endswith(b"hello world")
    assert _status(ws) == 501
    for seen in upstream.seen:
        names = {k.lower() for k, _ in seen.raw_headers}
        assert not names & {b"upgrade", b"http2-settings", b"connection"}, seen


# -- 2. request line and header limits ------------------------------------------------------


def test_a_16_mb_target_is_414_and_the_connection_closes(upstream: RecordingUpstream) -> None:
    with running_sidecar(upstream.url) as svc:
        out = _refused(svc, b"GET /" + b"a" * (16 << 20) + b" HTTP/1.1\r\n", send_in_thread=True)
        # Just past the documented default (8 KiB) is refused too; at it, served.
        over = _refused(svc, b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        at = _refused(
            svc, b"GET /" + b"a" * 8191 + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
    assert _status(out) == 414 and b"proxy.max_target_bytes" in out
    assert b"connection: close" in out
    assert _status(over) == 414
    # Taken and forwarded (the test upstream, aiohttp, takes 8190 bytes and answers 400 itself).
    assert _status(at) != 414 and b"proxy.max_target_bytes" not in at
    assert len(upstream.seen) == 3  # the inference calls of _others_answer (aiohttp refused `at`)


def test_100000_header_lines_are_431_and_the_connection_closes(upstream: RecordingUpstream) -> None:
    lines = b"".join(b"x-h%d: v\r\n" % i for i in range(100_000))
    with running_sidecar(upstream.url) as svc:
        many = _refused(svc, b"GET /echo HTTP/1.1\r\nhost: x\r\n" + lines + b"\r\n", True)
        # One header value past 60 KiB, sent as it would be by a slow client: in pieces.
        big = _refused(svc, b"GET /echo HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * (1 << 20), True)

        # Past 60 KiB of names and values in one read, and across reads, is refused; under, taken.
        def section(n: int) -> bytes:
            return b"".join(b"x-h%03d: %b\r\n" % (i, b"v" * 700) for i in range(n))

        over = _refused(svc, b"GET /echo HTTP/1.1\r\nhost: x\r\n" + section(90) + b"\r\n")
        s = _connect(svc.proxy_url)
        s.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\n" + section(60))
        time.sleep(0.2)  # a second read
        s.sendall(section(90)[len(section(60)) :] + b"\r\n")
        over_reads = _read_until_closed(s)
        under = _refused(
            svc, b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" + section(80) + b"\r\n"
        )
        # host, 98 more and connection: 100 lines, the documented default, are taken.
        hundred = b"".join(b"x-h%d: v\r\n" % i for i in range(98))
        ok = _refused(
            svc, b"GET /echo HTTP/1.1\r\nhost: x\r\n" + hundred + b"connection: close\r\n\r\n"
        )
    assert _status(many) == 431 and b"proxy.max_headers" in many
    assert _status(big) == 431
    assert _status(over) == 431 and _status(over_reads) == 431
    assert _status(under) == 200
    assert _status(ok) == 200
    assert len(upstream.seen) == 7  # the inference calls of _others_answer, `under` and `ok`


# -- 3. slow clients ------------------------------------------------------------------------


def test_a_slow_head_gets_408_within_the_header_deadline(upstream: RecordingUpstream) -> None:
    with running_sidecar(upstream.url, proxy=FAST) as svc:
        s = _connect(svc.proxy_url)
        s.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\n")
        for i in range(20):  # slowloris: a header every 0.1 s keeps the connection busy, not alive
            try:
                s.sendall(b"x-%d: y\r\n" % i)
            except OSError:
                break
            time.sleep(0.1)
        _others_answer(svc)
        out = _read_until_closed(s)
        # A connection that sends nothing at all meets the same deadline, and is closed
        # without an answer: there is no request to answer, and a client that sent one as a
        # 408 left would take the 408 for its answer. (Not closed, its read times out at 10 s;
        # keep-alive's idle deadline is 75 s.)
        silent = _connect(svc.proxy_url)
        _others_answer(svc)
        nothing = _read_until_closed(silent)
    assert _status(out) == 408 and b"proxy.header_timeout_s" in out
    assert nothing == b""
    assert upstream.seen and all(s.path_qs == "/v2/models/m/infer" for s in upstream.seen)


def test_a_stalled_body_gets_408_and_holds_no_upstream_connection(
    upstream: RecordingUpstream,
) -> None:
    with running_sidecar(upstream.url, proxy=FAST) as svc:
        # More stalled pass-through calls than the upstream budget (256): none of them takes a
        # connection (no body byte came), so a pass-through call still gets through.
        stalled = [_connect(svc.proxy_url) for _ in range(257)]
        for s in stalled:
            s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
        s = _connect(svc.proxy_url)
        s.sendall(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        )
        passed = _read_until_closed(s)
        _others_answer(svc)
        # A body that starts and then stalls is cut by the same deadline.
        part = _connect(svc.proxy_url)
        part.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        outs = [_read_until_closed(s) for s in [*stalled, part]]
    assert _status(passed) == 200 and passed.endswith(b"ok")
    assert all(_status(o) == 408 and b"proxy.body_timeout_s" in o for o in outs)
    # The upstream saw the good calls and the one whose body started, never the others.
    assert sum(1 for s in upstream.seen if s.path_qs == "/echo") <= 2


def test_expect_100_continue_without_a_body_times_out(upstream: RecordingUpstream) -> None:
    with running_sidecar(upstream.url, proxy=FAST) as svc:
        out = {}
        for path in (b"/echo", b"/v2/models/m/infer"):
            s = _connect(svc.proxy_url)
            s.sendall(
                b"POST %b HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
                % path
            )
            assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            _others_answer(svc)
            out[path] = _read_until_closed(s)
    assert all(_status(o) == 408 for o in out.values()), out


def test_idle_keep_alive_connections_are_closed(upstream: RecordingUpstream) -> None:
    with running_sidecar(upstream.url, proxy={"idle_timeout_s": 0.4}) as svc:
        s = _connect(svc.proxy_url)
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        assert _answered(s, b"hi")
        _others_answer(svc)
        assert _read_until_closed(s) == b""  # closed without a word, once idle


def test_connections_past_the_cap_get_503_and_are_closed(upstream: RecordingUpstream) -> None:
    with running_sidecar(upstream.url, proxy={"max_connections": 4}) as svc:
        held = [_connect(svc.proxy_url) for _ in range(4)]
        for s in held:  # each is open and served
            s.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
            assert _answered(s, b"-")
        extra = _connect(svc.proxy_url)
        refused = _read_until_closed(extra)
        held.pop().close()
        time.sleep(0.2)  # the server sees the close
        _others_answer(svc)
    assert _status(refused) == 503 and b"proxy.max_connections" in refused


def test_pass_through_calls_cannot_take_every_upstream_connection(
    upstream: RecordingUpstream,
) -> None:
    release = threading.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while not release.is_set():
            await resp.write(b".")
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    slow.streaming = True  # type: ignore[attr-defined]
    upstream.routes["/slow"] = slow
    with running_sidecar(upstream.url, proxy={"max_stream_connections": 3}) as svc:
        slow_calls = [_connect(svc.proxy_url) for _ in range(3)]
        for s in slow_calls:
            s.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        busy = _refused(svc, b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        _others_answer(svc)  # inference calls are not counted against the budget
        release.set()
        for s in slow_calls:
            s.close()
    [(status, _, body)] = _responses(busy)
    assert status == 503 and json.loads(body)["cause"] == "busy"


# -- 4. the request target -------------------------------------------------------------------


class RawUpstream:
    """A plain-socket HTTP/1.1 upstream: records each request head byte for byte and answers
    with `answer(head)`, which may be anything (bytes after the body included)."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.heads: list[bytes] = []
        self.connections = 0
        self._answer = answer
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                buf = b""
                sock: socket.socket = self.request
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                    while len(buf) < length:
                        buf += sock.recv(65536)
                    buf = buf[length:]
                    outer.heads.append(head)
                    sock.sendall(outer._answer(head))

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[RawUpstream]:
        t = threading.Thread(target=self.server.serve_forever, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def _infer_answer(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b%b"
        % (len(V2_OUT), V2_OUT, extra)
    )


def test_the_request_target_is_forwarded_byte_for_byte_and_only_to_the_upstream() -> None:
    raw = RawUpstream(lambda head: _infer_answer())
    with raw.running(), running_sidecar(raw.url) as svc:
        for target in (b"/v2/%2e%2e/admin", b"/a/../b?x=%2F&y", b"/v2/models/m/infer%3F"):
            got = _refused(svc, b"GET %b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % target)
            assert _status(got) == 200
        # Absolute-form: forwarded in origin-form to the configured upstream, Host as sent.
        absolute = _refused(
            svc,
            b"GET http://other.example:80/x?q=1 HTTP/1.1\r\nhost: other.example\r\n"
            b"connection: close\r\n\r\n",
        )
        bad_form = _refused(svc, b"GET ftp://other/x HTTP/1.1\r\nhost: x\r\n\r\n")
    lines = [h.split(b"\r\n")[0] for h in raw.heads if not h.startswith(b"POST")]
    assert lines == [
        b"GET /v2/%2e%2e/admin HTTP/1.1",
        b"GET /a/../b?x=%2F&y HTTP/1.1",
        b"GET /v2/models/m/infer%3F HTTP/1.1",
        b"GET /x?q=1 HTTP/1.1",
    ]
    assert _status(absolute) == 200
    assert b"host: other.example" in next(h for h in raw.heads if h.startswith(b"GET /x"))
    assert _status(bad_form) == 400


def test_error_bodies_never_name_the_upstream() -> None:
    port = free_port()  # nothing listens there
    with running_sidecar(f"http://127.0.0.1:{port}") as svc:
        s = _connect(svc.proxy_url)
        s.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        out = _read_until_closed(s)
        assert http_get(svc.control_url + "/healthz")[0] == 200
    assert _status(out) == 502
    assert str(port).encode() not in out and b"127.0.0.1" not in out


# -- 5. what the parser cannot accept is a 4xx ------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length:  5 \r\nconnection: close\r\n\r\nhello",
            200,
        ),
        (b"GET /echo HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\n\r\n", 400),
        (b"GET /echo HTTP/2.0\r\nhost: x\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"G\x00T / HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_requests_the_parser_cannot_accept_are_4xx(
    upstream: RecordingUpstream, request_bytes: bytes, status: int
) -> None:
    with running_sidecar(upstream.url) as svc:
        out = _refused(svc, request_bytes)
    assert _status(out) == status, out
    if status == 200:
        assert out.endswith(b"hello")
        [seen] = [s for s in upstream.seen if s.path_qs == "/echo"]
        assert (b"content-length", b"5") in seen.raw_headers
    else:
        assert b"connection: close" in out


def test_a_bad_request_pipelined_after_good_ones_keeps_their_answers(
    upstream: RecordingUpstream,
) -> None:
    with running_sidecar(upstream.url) as svc:
        out = _refused(
            svc,
            INFER + b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\ntwo"
            b"GET /echo HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n",
        )
    got = _responses(out)
    assert [(status, body) for status, _, body in got[:2]] == [(200, V2_OUT), (200, b"two")]
    assert got[2][0] == 400 and got[2][1][b"connection"] == b"close"
    assert len(got) == 3


# -- 6. an upstream that sends more than its answer -------------------------------------------


def test_bytes_after_an_upstream_answer_do_not_poison_the_pool() -> None:
    poison = b"HTTP/1.1 200 OK\r\nx-extra: 1\r\ncontent-length: 0\r\n\r\n"

    def answer(head: bytes) -> bytes:
        if b"poison" in head.split(b"\r\n")[0]:
            return _infer_answer(poison)
        return _infer_answer()

    raw = RawUpstream(answer)
    with raw.running(), running_sidecar(raw.url) as svc:
        outs = []
        for path in (b"/v2/models/poison/infer", b"/v2/models/m/infer", b"/get/poison", b"/get"):
            method = b"POST" if path.startswith(b"/v2") else b"GET"
            s = _connect(svc.proxy_url)
            s.sendall(
                b"%b %b HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b"
                % (method, path, len(V2), V2)
            )
            outs.append(_read_until_closed(s))
            time.sleep(0.05)  # let the stray bytes arrive before the next call
        _others_answer(svc)
    for out in outs:
        [(status, headers, body)] = _responses(out)
        assert (status, body) == (200, V2_OUT)
        assert b"x-extra" not in headers
        assert out.lower().count(b"content-length") == 1
    # Each poisoned connection was dropped, so the following call opened a fresh one.
    assert raw.connections >= 3


@pytest.mark.parametrize(
    "key",
    [
        "header_timeout_s = 0",
        "body_timeout_s = -1",
        "max_target_bytes = 10",
        "max_header_bytes = 0",
        "max_headers = 1",
        "max_connections = 0",
        "max_stream_connections = 0",
    ],
)
def test_a_bad_limit_stops_the_start_naming_its_key(tmp_path: Path, key: str) -> None:
    f = tmp_path / "s.toml"
    f.write_text(f"[proxy]\n{key}\n")
    with pytest.raises(ConfigError, match=re.escape("proxy." + key.split(" ")[0])):
        load_settings(f, environ={})
