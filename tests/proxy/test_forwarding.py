"""The proxy forwards everything unchanged, in front of a real upstream."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import threading
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from tests.servers import RecordingUpstream, running_sidecar, wait_until


def _conn(url: str, timeout: float = 10) -> http.client.HTTPConnection:
    p = urlsplit(url)
    return http.client.HTTPConnection(p.hostname, p.port, timeout=timeout)


def test_non_inference_call_passes_through_byte_identical(upstream: RecordingUpstream) -> None:
    payload = bytes(range(256)) * 10

    @upstream.route("/some/where")
    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(status=207, body=payload[::-1])
        resp.headers["X-Custom"] = "value; with=params"
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["Content-Type"] = "application/x-odd"
        return resp

    with running_sidecar(upstream.url) as svc:
        c = _conn(svc.proxy_url)
        c.request(
            "PUT",
            "/some/where?x=1&y=%20two&x=3",
            body=payload,
            headers={"X-Client": "abc", "Content-Type": "application/octet-stream"},
        )
        r = c.getresponse()
        body = r.read()
    assert r.status == 207
    assert body == payload[::-1]
    assert r.getheader("x-custom") == "value; with=params"
    assert r.msg.get_all("set-cookie") == ["a=1", "b=2"]
    assert r.getheader("content-type") == "application/x-odd"
    assert r.getheader("x-decision-id") is None
    seen = upstream.seen[-1]
    assert seen.method == "PUT"
    assert seen.path_qs == "/some/where?x=1&y=%20two&x=3"
    assert seen.body == payload
    headers = dict((k.lower(), v) for k, v in seen.raw_headers)
    assert headers[b"x-client"] == b"abc"
    assert headers[b"content-type"] == b"application/octet-stream"


def test_group_attributes_never_reach_the_model_on_a_streamed_call(
    upstream: RecordingUpstream,
) -> None:
    @upstream.route("/v2/models/m/ready")
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"ok")

    with running_sidecar(upstream.url) as svc:
        c = _conn(svc.proxy_url)
        c.request("GET", "/v2/models/m/ready", headers={"X-Group-Attributes": "gender=F"})
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"ok")
    names = {k.lower() for k, _ in upstream.seen[-1].raw_headers}
    assert b"x-group-attributes" not in names


def test_every_method_is_forwarded(upstream: RecordingUpstream) -> None:
    @upstream.route("*")
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=request.method.encode())

    with running_sidecar(upstream.url) as svc:
        c = _conn(svc.proxy_url)
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            c.request(method, f"/m/{method}")
            r = c.getresponse()
            assert r.read() == method.encode()
        c.request("HEAD", "/m/head")
        r = c.getresponse()
        assert r.status == 200
        assert r.read() == b""
    assert [s.method for s in upstream.seen] == [
        "GET",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "HEAD",
    ]


def test_hop_by_hop_headers_are_not_forwarded_either_way(upstream: RecordingUpstream) -> None:
    @upstream.route("/hop")
    async def handler(request: web.Request) -> web.Response:
        resp = web.Response(body=b"ok")
        resp.headers["Connection"] = "x-up-hop"
        resp.headers["X-Up-Hop"] = "secret"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers["X-End-To-End"] = "kept"
        return resp

    with running_sidecar(upstream.url) as svc:
        c = _conn(svc.proxy_url)
        c.putrequest("GET", "/hop", skip_host=True)
        c.putheader("Host", "client-chosen.example")
        c.putheader("Connection", "keep-alive, X-Client-Hop")
        c.putheader("X-Client-Hop", "drop me")
        c.putheader("Keep-Alive", "timeout=5")
        c.putheader("TE", "trailers")
        c.putheader("Trailer", "X-T")
        c.putheader("Upgrade", "h2c")
        c.putheader("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        c.putheader("X-Forwarded-For", "10.1.2.3")
        c.putheader("X-Forwarded-Proto", "gopher")
        c.putheader("X-End-To-End", "kept")
        c.endheaders()
        r = c.getresponse()
        assert r.read() == b"ok"
    names = {k.lower() for k, _ in r.getheaders()}
    assert "x-up-hop" not in names and "keep-alive" not in names
    assert "proxy-authenticate" not in names
    assert r.getheader("x-end-to-end") == "kept"
    seen = {k.lower(): v for k, v in upstream.seen[-1].raw_headers}
    for hop in (
        b"x-client-hop",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
    ):
        assert hop not in seen, hop
    assert seen[b"x-end-to-end"] == b"kept"
    # The upstream is the configured one whatever Host says; Host itself passes unchanged.
    assert seen[b"host"] == b"client-chosen.example"
    assert seen[b"x-forwarded-for"] == b"10.1.2.3, 127.0.0.1"
    assert seen[b"x-forwarded-proto"] == b"http"


def test_large_request_body_is_streamed_not_buffered(upstream: RecordingUpstream) -> None:
    """The upstream sees the first chunk before the client has sent the rest."""
    first_seen = threading.Event()
    digest = hashlib.sha256()
    total = {"n": 0}

    async def handler(request: web.Request) -> web.Response:
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total["n"] += len(chunk)
            first_seen.set()
        return web.Response(body=digest.hexdigest().encode())

    handler.streaming = True  # type: ignore[attr-defined]
    upstream.routes["/upload"] = handler
    chunk = b"x" * (1 << 20)
    with running_sidecar(upstream.url) as svc:
        c = _conn(svc.proxy_url, timeout=30)
        c.putrequest("POST", "/upload")
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()

        def send_chunk(data: bytes) -> None:
            c.send(b"%x\r\n%s\r\n" % (len(data), data))

        send_chunk(chunk)
        assert first_seen.wait(10), "upstream saw nothing before the body was complete"
        expect = hashlib.sha256(chunk)
        for _ in range(31):
            send_chunk(chunk)
            expect.update(chunk)
        c.send(b"0\r\n\r\n")
        r = c.getresponse()
        assert r.read().decode() == expect.hexdigest()
    assert total["n"] == 32 << 20


def test_large_response_body_is_streamed(upstream: RecordingUpstream) -> None:
    """The client gets the first chunk while the upstream is still holding the rest."""
    release = threading.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"a" * 65536)
        while not release.is_set():
            await asyncio.sleep(0.01)
        for _ in range(64):
            await resp.write(b"b" * 65536)
        await resp.write_eof()
        return resp

    handler.streaming = True  # type: ignore[attr-defined]
    upstream.routes["/download"] = handler
    with running_sidecar(upstream.url) as svc:
        c = _conn(svc.proxy_url, timeout=30)
        c.request("GET", "/download")
        r = c.getresponse()
        first = r.read(65536)
        assert first == b"a" * 65536
        release.set()
        rest = r.read()
    assert rest == b"b" * (64 * 65536)


def test_unreachable_upstream_gives_502_naming_the_cause() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with running_sidecar(f"http://127.0.0.1:{port}") as svc:
            for path, body in (("/anything", None), ("/v2/models/m/infer", b"{}")):
                c = _conn(svc.proxy_url)
                c.request("POST", path, body=body)
                r = c.getresponse()
                err = orjson.loads(r.read())
                assert r.status == 502, path
                assert r.getheader("content-type") == "application/json"
                assert err["cause"] == "connect_failed"


def test_slow_upstream_gives_504(upstream: RecordingUpstream) -> None:
    @upstream.route("*")
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(body=b"late")

    with running_sidecar(upstream.url, proxy={"timeout_s": 0.3}) as svc:
        for path in ("/slow", "/v2/models/m/infer"):
            c = _conn(svc.proxy_url)
            c.request("POST", path, body=b"{}")
            r = c.getresponse()
            err = orjson.loads(r.read())
            assert r.status == 504, path
            assert err["cause"] == "timeout"


def test_client_disconnect_cancels_the_upstream_call(upstream: RecordingUpstream) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    @upstream.route("*")
    async def handler(request: web.Request) -> web.Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response(body=b"never")

    with running_sidecar(upstream.url) as svc:
        for path in ("/v2/models/m/infer", "/plain"):
            started.clear()
            cancelled.clear()
            c = _conn(svc.proxy_url)
            c.request("POST", path, body=b'{"inputs": []}')
            assert started.wait(10)
            c.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            c.close()
            assert cancelled.wait(10), f"upstream call for {path} was not cancelled"
        wait_until(
            lambda: "sidecar_client_disconnects_total 2" in svc.registry.render(),
            what="disconnects counted",
        )
