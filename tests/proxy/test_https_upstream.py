"""An https:// upstream: verified against `proxy.upstream_ca_file`, forwarded like any other.

The buffered inference path and the streamed path both reach an https upstream
through the data plane's own pool, over TLS; a real TLS server on 127.0.0.1 with a
certificate from a throwaway CA checks both (and a streamed download large enough
to pause reading), and that a certificate the sidecar cannot verify is a 502
naming TLS, not a silent pass. tests/proxy/test_upstream_errors.py checks a wrong
host name too.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import trustme
from aiohttp import web

from sidecar.config import ConfigError, load_settings
from tests.servers import RecordingUpstream, recording_upstream, running_sidecar

V2_RESPONSE = (
    b'{"model_name":"credit","outputs":['
    b'{"name":"predict_proba","shape":[1,2],"datatype":"FP32","data":[0.25,0.75]}]}'
)
V2_REQUEST = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(ca: trustme.CA) -> Iterator[RecordingUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with recording_upstream(tls=context) as up:
        yield up


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _post(url: str, path: str, body: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
    p = urlsplit(url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
    c.request("POST", path, body=body, headers={"content-type": "application/json"})
    r = c.getresponse()
    return r.status, r.msg, r.read()


def test_inference_and_streamed_calls_reach_a_verified_https_upstream(
    tls_upstream: RecordingUpstream, ca_file: Path
) -> None:
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=V2_RESPONSE, content_type="application/json")

    async def other(request: web.Request) -> web.Response:
        return web.Response(status=201, body=request["body"][::-1])

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(64):
            await resp.write(bytes([i]) * 65536)
        await resp.write_eof()
        return resp

    download.streaming = True  # type: ignore[attr-defined]
    tls_upstream.routes["/v2/models/credit/infer"] = infer
    tls_upstream.routes["/upload"] = other
    tls_upstream.routes["/download"] = download
    with running_sidecar(tls_upstream.url, proxy={"upstream_ca_file": str(ca_file)}) as svc:
        status, headers, body = _post(svc.proxy_url, "/v2/models/credit/infer", V2_REQUEST)
        assert (status, body) == (200, V2_RESPONSE)
        rid = headers["x-decision-id"]
        assert rid
        assert svc.pipeline.drain(5)
        decision = svc.store.get(f"{rid}/0")
        assert decision is not None
        assert (decision.features, decision.confidence) == ([1, 2, 3], 0.75)

        payload = bytes(range(256)) * 64
        status, headers, body = _post(svc.proxy_url, "/upload", payload)
        assert (status, body) == (201, payload[::-1])
        assert headers["x-decision-id"] is None

        p = urlsplit(svc.proxy_url)
        c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
        c.request("GET", "/download")
        r = c.getresponse()
        assert r.status == 200
        assert r.read() == b"".join(bytes([i]) * 65536 for i in range(64))
    assert tls_upstream.seen[0].body == V2_REQUEST
    assert tls_upstream.seen[1].body == payload


def test_an_unverifiable_upstream_certificate_is_a_502_naming_tls(
    tls_upstream: RecordingUpstream,
) -> None:
    # No CA file: the system's CAs do not know the throwaway CA.
    with running_sidecar(tls_upstream.url) as svc:
        for path in ("/v2/models/credit/infer", "/upload"):
            status, _, body = _post(svc.proxy_url, path, V2_REQUEST)
            assert status == 502, body
            err = orjson.loads(body)
            assert err["cause"] == "tls", err
            assert "certificate" in err["detail"].lower(), err
    assert tls_upstream.seen == []


def test_a_ca_file_that_holds_no_certificate_fails_at_start_naming_the_key(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"proxy\.upstream_ca_file"):
        load_settings(environ={}, overrides={"proxy": {"upstream_ca_file": str(bad)}})
    with pytest.raises(ConfigError, match=r"proxy\.upstream_ca_file"):
        load_settings(
            environ={}, overrides={"proxy": {"upstream_ca_file": str(tmp_path / "missing.pem")}}
        )
