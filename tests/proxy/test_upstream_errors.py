"""The upstream error table (README, "Upstream errors"), for both kinds of call.

Every case is checked through a buffered inference call (`POST
/v2/models/m/infer`) and a streamed pass-through call (`GET /anything`), in
front of real servers on 127.0.0.1 that misbehave on purpose: a port that
refuses, a listener whose backlog is full (it never completes a handshake), raw
sockets that answer late, half or garbage, and TLS servers the sidecar must not
trust.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import trustme

from tests.servers import recording_upstream, running_sidecar

PATHS = (("POST", "/v2/models/m/infer", b"{}"), ("GET", "/anything", None))

Behaviour = Callable[[socket.socket, threading.Event], None]


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            while len(body) < int(value):
                body += conn.recv(65536)
    return head


@contextlib.contextmanager
def raw_upstream(behaviour: Behaviour) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that runs `behaviour` on every connection, each in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            behaviour(conn, release)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            t.start()
            threads.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        release.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join(5)
        for t in threads:
            t.join(5)


def _answer_late(conn: socket.socket, release: threading.Event) -> None:
    _read_request(conn)
    release.wait(30)


def _close_in_the_head(conn: socket.socket, release: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: appli")


def _close_in_the_body(conn: socket.socket, release: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)


def _garbage(conn: socket.socket, release: threading.Event) -> None:
    _read_request(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


def _call(url: str, method: str, path: str, body: bytes | None) -> http.client.HTTPResponse:
    p = urlsplit(url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=15)
    c.request(method, path, body=body, headers={"content-type": "application/json"})
    return c.getresponse()


def _assert_error(url: str, status: int, cause: str, **proxy: Any) -> list[dict[str, Any]]:
    errors = []
    with running_sidecar(url, proxy=proxy) as svc:
        for method, path, body in PATHS:
            r = _call(svc.proxy_url, method, path, body)
            err = orjson.loads(r.read())
            assert (r.status, err["cause"]) == (status, cause), (path, err)
            assert r.getheader("content-type") == "application/json"
            assert err["error"] == ("upstream timeout" if status == 504 else "upstream unavailable")
            errors.append(err)
        assert f'sidecar_upstream_errors_total{{status="{status}"}} 2' in svc.registry.render()
    return errors


def test_connection_refused_is_502_connect_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        _assert_error(f"http://127.0.0.1:{s.getsockname()[1]}", 502, "connect_failed")


def test_connect_timeout_is_502_connect_timeout() -> None:
    """A listener whose accept queue is full drops new handshakes: the connect hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                f = socket.socket()
                f.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    f.connect(("127.0.0.1", port))
                fillers.append(f)
            errors = _assert_error(
                f"http://127.0.0.1:{port}", 502, "connect_timeout", connect_timeout_s=0.3
            )
        finally:
            for f in fillers:
                f.close()
    assert all("within 0.3s" in e["detail"] for e in errors)


def test_an_upstream_too_slow_to_answer_is_504_timeout() -> None:
    with raw_upstream(_answer_late) as url:
        _assert_error(url, 504, "timeout", timeout_s=0.3)


def test_an_upstream_that_closes_mid_head_is_502_disconnected() -> None:
    with raw_upstream(_close_in_the_head) as url:
        _assert_error(url, 502, "disconnected")


def test_an_upstream_that_closes_mid_body() -> None:
    """Buffered: 502 disconnected. Streamed: the head has gone out, so the client's connection is cut."""
    with raw_upstream(_close_in_the_body) as url, running_sidecar(url) as svc:
        r = _call(svc.proxy_url, "POST", "/v2/models/m/infer", b"{}")
        err = orjson.loads(r.read())
        assert (r.status, err["cause"]) == (502, "disconnected")

        r = _call(svc.proxy_url, "GET", "/anything", None)
        assert r.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            r.read()
        assert cut.value.partial == b"x" * 10
        assert 'sidecar_upstream_errors_total{status="502"} 2' in svc.registry.render()


def test_a_garbage_answer_is_502_bad_response() -> None:
    with raw_upstream(_garbage) as url:
        _assert_error(url, 502, "bad_response")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize(
    ("cert_host", "trust_ca"),
    [("127.0.0.1", False), ("localhost", True)],
    ids=["unknown-ca", "wrong-host-name"],
)
def test_a_certificate_that_fails_verification_is_502_tls_and_nothing_is_sent(
    ca: trustme.CA, tmp_path: Path, cert_host: str, trust_ca: bool
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_host).configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proxy = {"upstream_ca_file": str(ca_file)} if trust_ca else {}
    with recording_upstream(tls=context) as up:
        errors = _assert_error(up.url, 502, "tls", **proxy)
    assert up.seen == []
    assert all("certificate" in e["detail"].lower() for e in errors), errors
