"""The pooled client connection to the model server.

aiohttp's client is used because it measured several times cheaper per
request than httpx's AsyncClient on this kind of machine (README,
"Why aiohttp"). The session is configured to be transparent: no automatic
decompression, no default headers added.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable
from urllib.parse import urlsplit

import aiohttp

from sidecar.config import ProxySettings
from sidecar.dataplane.client import Answer, Pool
from sidecar.dataplane.errors import UpstreamError, classify
from sidecar.dataplane.headers import request_head, request_headers
from sidecar.types import RawHeaders

__all__ = ["Answer", "Upstream", "UpstreamError", "classify"]

_NO_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type", "Accept")


class Upstream:
    """One pooled session to the configured upstream; the target never depends on the Host header."""

    def __init__(self, settings: ProxySettings) -> None:
        self.base = settings.upstream
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(self.base)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._pool: Pool | None = None
        if parts.scheme == "http":
            self._pool = Pool(
                self._host,
                self._port,
                settings.pool_size,
                settings.connect_timeout_s,
                settings.timeout_s,
            )

    async def start(self) -> None:
        s = self._settings
        tls: ssl.SSLContext | bool = True  # an https:// upstream is verified, always
        if s.upstream_ca_file is not None:
            tls = ssl.create_default_context(cafile=str(s.upstream_ca_file))
        connector = aiohttp.TCPConnector(
            limit=s.pool_size,
            limit_per_host=s.pool_size,
            ttl_dns_cache=300,
            enable_cleanup_closed=False,
            family=socket.AF_UNSPEC,
            ssl=tls,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=s.connect_timeout_s, sock_read=s.timeout_s
            ),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=2**16,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("upstream client not started")
        return self._session

    def request(
        self,
        method: str,
        path_qs: str,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.client._RequestContextManager:
        return self.session.request(
            method,
            self.base + path_qs,
            headers=headers,
            data=data,
            allow_redirects=False,
            compress=None,
            chunked=None,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )

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
        if self._pool is not None:
            head = request_head(
                method, target, headers, peer, scheme, strip, len(body), self._pool.host_header
            )
            # The pool's coroutine itself, not one wrapping it: a level less to resume.
            return self._pool.request(head, body)
        out = request_headers(headers, peer, scheme, strip, keep_length=False)
        return self._buffered_by_aiohttp(method, target.decode("latin-1"), out, body)

    async def _buffered_by_aiohttp(
        self, method: str, path_qs: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        try:
            async with self.request(method, path_qs, headers, body) as resp:
                # Raw, like the pool's answer: the data plane filters hop-by-hop headers once.
                return Answer(resp.status, list(resp.raw_headers), await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise classify(exc) from exc

    async def reachable(self, timeout_s: float = 1.0) -> bool:
        """Readiness: can a TCP connection to the upstream be opened?"""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), timeout_s
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True
