"""The data plane's HTTP/1.1 server, spoken to over raw sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import urlsplit

from aiohttp import web

from tests.servers import RecordingUpstream, read_until, running_sidecar

V2 = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'
V2_OUT = b'{"outputs":[{"name":"probabilities","shape":[1,2],"datatype":"FP32","data":[0.4,0.6]}]}'


def _sock(url: str) -> socket.socket:
    p = urlsplit(url)
    s = socket.create_connection((p.hostname, p.port), timeout=10)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def _responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Split a byte stream of Content-Length framed responses."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get(b"content-length", b"0"))
        out.append((lines[0], headers, rest[:n]))
        data = rest[n:]
    return out


def _setup(upstream: RecordingUpstream) -> None:
    @upstream.route("/v2/models/m/infer")
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=V2_OUT, content_type="application/json")

    @upstream.route("/echo")
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=request["body"] or b"-")


def test_pipelined_requests_are_answered_in_order(upstream: RecordingUpstream) -> None:
    _setup(upstream)
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        reqs = b"".join(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (len(b), b)
            for b in (b"one", b"two", b"three")
        )
        infer = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (
            len(V2),
            V2,
        )
        last = b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        s.sendall(reqs + infer + last)
        got = _responses(_read_until_closed(s))
    assert [b for _, _, b in got] == [b"one", b"two", b"three", V2_OUT, b"-"]
    assert all(status == b"HTTP/1.1 200 OK" for status, _, _ in got)
    assert b"x-decision-id" in got[3][1]
    assert got[4][1][b"connection"] == b"close"


def test_malformed_request_gets_400_and_the_connection_closes(upstream: RecordingUpstream) -> None:
    _setup(upstream)
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"malformed HTTP request" in data
    assert upstream.seen == []


def test_http10_and_expect_continue(upstream: RecordingUpstream) -> None:
    _setup(upstream)
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(b"POST /echo HTTP/1.0\r\ncontent-length: 5\r\n\r\nhello")
        data = _read_until_closed(s)
        assert data.endswith(b"hello") and b"200 OK" in data.split(b"\r\n")[0]

        s = _sock(svc.proxy_url)
        s.sendall(
            b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-length: %d\r\n\r\n" % len(V2)
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(V2 + b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        got = _responses(_read_until_closed(s))
    assert [b for _, _, b in got] == [V2_OUT, b"-"]
    assert b"expect" not in {k.lower() for k, _ in upstream.seen[-2].raw_headers}


def test_unlength_upstream_answer_is_rechunked_and_head_has_no_body(
    upstream: RecordingUpstream,
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"ab", b"cd", b"ef"):
            await resp.write(part)
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    chunked.streaming = True  # type: ignore[attr-defined]
    upstream.routes["/chunked"] = chunked
    _setup(upstream)
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(b"GET /chunked HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = _read_until_closed(s)
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        decoded = b""
        while body:
            size_line, _, body = body.partition(b"\r\n")
            n = int(size_line, 16)
            decoded += body[:n]
            body = body[n + 2 :]
        assert decoded == b"abcdef"

        s = _sock(svc.proxy_url)
        s.sendall(b"HEAD /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = _read_until_closed(s)
    assert data.endswith(b"\r\n\r\n")
    assert b"content-length: 1" in data.lower()


def test_idle_keep_alive_connections_are_closed(upstream: RecordingUpstream) -> None:
    _setup(upstream)
    with running_sidecar(upstream.url, proxy={"idle_timeout_s": 0.4}) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        first = read_until(s, b"hi")
        assert first.endswith(b"hi")
        s.settimeout(5)
        t0 = time.monotonic()
        assert s.recv(100) == b""  # the server closed the idle connection
        waited = time.monotonic() - t0
    # Not before its timeout; that it closes at all is the recv above (it would time out).
    assert waited > 0.3
