"""Streamed pass-through calls on the data plane's own client: framing, back-pressure, idle timeout.

A real aiohttp upstream on 127.0.0.1 and the sidecar in front of it, spoken
to over raw sockets where the framing itself is what is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import threading
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from tests.servers import RecordingUpstream, running_sidecar, wait_until

MiB = 1 << 20


def _sock(url: str, rcvbuf: int | None = None) -> socket.socket:
    p = urlsplit(url)
    s = socket.socket()
    if rcvbuf is not None:
        # Before connecting, so the window the proxy may fill stays small.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(15)
    s.connect((p.hostname, p.port))
    return s


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            return out
        out += body[:n]
        body = body[n + 2 :]


def test_a_large_download_is_read_from_the_upstream_only_as_fast_as_the_client_takes_it(
    upstream: RecordingUpstream,
) -> None:
    total = 64 * MiB
    piece = bytes(range(256)) * 256  # 64 KiB
    sent = {"n": 0}

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        while sent["n"] < total:
            await resp.write(piece)  # waits while the proxy is not reading
            sent["n"] += len(piece)
        await resp.write_eof()
        return resp

    download.streaming = True  # type: ignore[attr-defined]
    upstream.routes["/download"] = download
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url, rcvbuf=64 * 1024)
        s.sendall(b"GET /download HTTP/1.1\r\nhost: x\r\n\r\n")
        head, got = _read_head(s)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length: %d" % total in head.lower()
        digest = hashlib.sha256(got)
        received = len(got)
        while received < MiB:
            chunk = s.recv(65536)
            digest.update(chunk)
            received += len(chunk)

        # The client stops reading: the upstream must stall once the buffers on the
        # way (sockets, and the proxy's high-water mark) are full, far short of 64 MiB.
        last = {"n": -1, "same": 0}

        def stalled() -> bool:
            now = sent["n"]
            last["same"] = last["same"] + 1 if now == last["n"] else 0
            last["n"] = now
            return last["same"] >= 20 or now >= total

        wait_until(stalled, timeout_s=30, what="the upstream's writes to settle")
        ahead = sent["n"] - received
        assert ahead < 24 * MiB, f"the proxy let the upstream run {ahead / MiB:.1f} MiB ahead"

        while received < total:
            chunk = s.recv(1 << 20)
            assert chunk, f"connection closed after {received} bytes"
            digest.update(chunk)
            received += len(chunk)
        s.close()
    assert received == total
    assert digest.hexdigest() == hashlib.sha256(piece * (total // len(piece))).hexdigest()


def test_an_upload_keeps_its_framing_chunked_or_sized(upstream: RecordingUpstream) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=hashlib.sha256(request["body"]).hexdigest().encode())

    upstream.routes["/upload"] = echo
    parts = [bytes([i]) * (100_000 + i) for i in range(5)]
    whole = b"".join(parts)
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for p in parts:
            s.sendall(b"%x\r\n%s\r\n" % (len(p), p))
        s.sendall(b"0\r\n\r\nPUT /upload HTTP/1.1\r\nhost: x\r\nconnection: close\r\n")
        s.sendall(b"content-length: %d\r\n\r\n%s" % (len(whole), whole))
        answers = _read_until_closed(s)
    assert answers.count(hashlib.sha256(whole).hexdigest().encode()) == 2
    chunked, sized = ({k.lower(): v for k, v in seen.raw_headers} for seen in upstream.seen)
    assert chunked[b"transfer-encoding"] == b"chunked" and b"content-length" not in chunked
    assert sized[b"content-length"] == str(len(whole)).encode()
    assert b"transfer-encoding" not in sized
    assert [seen.body for seen in upstream.seen] == [whole, whole]


def test_head_and_bodiless_statuses_end_at_the_head_and_keep_the_connections(
    upstream: RecordingUpstream,
) -> None:
    peers: list[int] = []

    async def resource(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        if request.headers.get("if-none-match") == '"v1"':
            return web.Response(status=304, headers={"etag": '"v1"'})
        if request.method == "DELETE":
            return web.Response(status=204)
        return web.Response(body=b"z" * 1000, headers={"etag": '"v1"'})

    upstream.routes["/resource"] = resource
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(b"HEAD /resource HTTP/1.1\r\nhost: x\r\n\r\n")
        head, rest = _read_head(s)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1000" in head.lower()
        assert rest == b""
        s.sendall(b'GET /resource HTTP/1.1\r\nhost: x\r\nif-none-match: "v1"\r\n\r\n')
        head, rest = _read_head(s)
        assert head.startswith(b"HTTP/1.1 304") and rest == b""
        assert b"transfer-encoding" not in head.lower()
        s.sendall(b"DELETE /resource HTTP/1.1\r\nhost: x\r\n\r\n")
        head, rest = _read_head(s)
        assert head.startswith(b"HTTP/1.1 204") and rest == b""
        # The same client connection still serves a call with a body.
        s.sendall(b"GET /resource HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head, rest = _read_head(s)
        assert head.startswith(b"HTTP/1.1 200")
        assert rest + _read_until_closed(s) == b"z" * 1000
    # HEAD's upstream connection is not reused (httptools would wait for the body it
    # announces); the 304 and 204 ones are, by the calls after them.
    assert peers[0] not in peers[1:]
    assert peers[1] == peers[2] == peers[3]


def test_an_http10_client_gets_an_unlength_answer_ended_by_close(
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
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(b"GET /chunked HTTP/1.0\r\n\r\n")
        data = _read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"abcdef"


def test_buffered_and_streamed_calls_share_one_pool(upstream: RecordingUpstream) -> None:
    peers: list[int] = []

    async def any_route(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        return web.Response(body=b"{}", content_type="application/json")

    upstream.routes["*"] = any_route
    with running_sidecar(upstream.url) as svc:
        p = urlsplit(svc.proxy_url)
        c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
        for method, path in [("POST", "/v2/models/m/infer"), ("GET", "/x")] * 3:
            c.request(method, path, body=b"{}" if method == "POST" else None)
            assert c.getresponse().read() == b"{}"
    assert len(peers) == 6 and len(set(peers)) == 1, peers


def test_a_streamed_answer_is_timed_by_its_idle_gaps_not_its_length(
    upstream: RecordingUpstream,
) -> None:
    stop = threading.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(20):  # about 2 s in all, against a 1 s timeout
            await resp.write(b"t")
            await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first")
        while not stop.is_set():
            await asyncio.sleep(0.05)
        return resp

    for handler in (trickle, stall):
        handler.streaming = True  # type: ignore[attr-defined]
    upstream.routes["/trickle"] = trickle
    upstream.routes["/stall"] = stall
    try:
        with running_sidecar(upstream.url, proxy={"timeout_s": 1.0}) as svc:
            p = urlsplit(svc.proxy_url)
            c = http.client.HTTPConnection(p.hostname, p.port, timeout=15)
            c.request("GET", "/trickle")
            assert c.getresponse().read() == b"t" * 20

            c = http.client.HTTPConnection(p.hostname, p.port, timeout=15)
            c.request("GET", "/stall")
            r = c.getresponse()
            assert r.status == 200
            with pytest.raises(http.client.IncompleteRead) as cut:
                r.read()
            assert cut.value.partial == b"first"
            wait_until(
                lambda: 'sidecar_upstream_errors_total{status="504"} 1' in svc.registry.render(),
                what="the idle timeout counted",
            )
    finally:
        stop.set()


def test_expect_continue_on_a_streamed_upload(upstream: RecordingUpstream) -> None:
    """The client gets its 100 Continue; the upstream's own interim 100 is not passed on."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=201, body=request["body"][::-1])

    upstream.routes["/upload"] = echo
    with running_sidecar(upstream.url) as svc:
        s = _sock(svc.proxy_url)
        s.sendall(
            b"PUT /upload HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-length: 5\r\nconnection: close\r\n\r\n"
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        data = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 201 Created\r\n"), data
    assert data.endswith(b"\r\n\r\nolleh")
    assert b" 100 " not in data
    assert upstream.seen[0].body == b"hello"
