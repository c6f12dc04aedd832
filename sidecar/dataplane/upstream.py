"""The data plane's one way to its upstream: `Upstream`, over the pool in sidecar.dataplane.client.

Both kinds of call share one pool of keep-alive connections (`proxy.pool_size`
idle ones kept), one pair of timeouts and one error mapping (UpstreamError,
sidecar.dataplane.errors):

- `proxy.connect_timeout_s` bounds opening a connection, TLS handshake included
  (past it: 502 `connect_timeout`);
- `proxy.timeout_s` bounds a buffered call's whole answer, and a streamed
  call's idle time (until the answer's head after the last request byte, then
  between body chunks); past it: 504 `timeout`.

An https:// upstream's certificate is always verified, against the system's
CAs or `proxy.upstream_ca_file`, with its host name checked; a failure is a 502
`tls` and nothing is sent.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit

from sidecar.config import ProxySettings
from sidecar.dataplane.client import Answer, Pool, Streamed
from sidecar.dataplane.errors import UpstreamError
from sidecar.dataplane.headers import request_head, stream_head
from sidecar.types import RawHeaders

__all__ = ["Answer", "Streamed", "Upstream", "UpstreamError"]


def tls_context(settings: ProxySettings) -> ssl.SSLContext:
    """Verification always on, host name checked; the CAs from proxy.upstream_ca_file if set."""
    cafile = str(settings.upstream_ca_file) if settings.upstream_ca_file is not None else None
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


class Upstream:
    """The configured upstream; the target never depends on the Host header."""

    def __init__(self, settings: ProxySettings) -> None:
        self.base = settings.upstream
        self._settings = settings
        parts = urlsplit(self.base)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._pool = Pool(
            self._host,
            self._port,
            settings.pool_size,
            settings.connect_timeout_s,
            settings.timeout_s,
            max_streams=settings.max_stream_connections,
        )

    async def start(self) -> None:
        """Load the CAs an https:// upstream is verified against (file I/O: at start, not per call)."""
        if self._https:
            self._pool.tls = tls_context(self._settings)

    async def close(self) -> None:
        self._pool.close()

    def buffered(
        self,
        method: str,
        target: bytes,
        headers: RawHeaders,
        peer: str | None,
        scheme: str,
        strip: frozenset[bytes],
        body: bytes,
    ) -> Awaitable[Answer]:
        """Forward a call whose body is in hand and read the whole answer. Raises UpstreamError."""
        pool = self._pool
        head = request_head(
            method, target, headers, peer, scheme, strip, len(body), pool.host_header
        )
        # The pool's coroutine itself, not one wrapping it: a level less to resume.
        return pool.request(head, body)

    def stream(
        self,
        method: str,
        target: bytes,
        headers: RawHeaders,
        peer: str | None,
        scheme: str,
        strip: frozenset[bytes],
        body: AsyncIterator[bytes] | None,
    ) -> AbstractAsyncContextManager[Streamed]:
        """Forward a call with both bodies streamed, never held whole.

        `async with upstream.stream(...) as answer:` enters once the answer's
        head is in (`answer.status`, raw `answer.headers`); `async for chunk in
        answer` then gives its body as it arrives. Raises UpstreamError, on
        entering or while iterating.
        """
        pool = self._pool
        head, chunked = stream_head(
            method, target, headers, peer, scheme, strip, body is not None, pool.host_header
        )
        return pool.stream(head, body, chunked, method == "HEAD")

    async def reachable(self, timeout_s: float = 1.0) -> bool:
        """Readiness: does the upstream answer HTTP/1.1 (TLS verified for https://)?

        An open TCP port is not enough: a gRPC-only server (HTTP/2 with prior
        knowledge) accepts the connection and then answers every HTTP/1.1 call
        with frames no client can read. The probe is `OPTIONS *` (RFC 9110
        §9.3.7: about the server, touching no resource); any status line counts.
        """
        probe = (
            f"OPTIONS * HTTP/1.1\r\nHost: {self._pool.host_header.decode('latin-1')}"
            "\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")

        async def ask() -> bytes:
            tls = self._pool.tls if self._https else None
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=tls, server_hostname=self._host if tls else None
            )
            try:
                writer.write(probe)
                return await reader.read(8)
            finally:
                writer.close()

        try:
            first = await asyncio.wait_for(ask(), timeout_s)
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        return first.startswith(b"HTTP/1.")
