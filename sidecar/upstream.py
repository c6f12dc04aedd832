"""The pooled client connection to the model server.

aiohttp's client is used because it measured several times cheaper per
request than httpx's AsyncClient on this kind of machine (README,
"Why aiohttp"). The session is configured to be transparent: no automatic
decompression, no default headers added.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from sidecar.config import ProxySettings

_NO_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type", "Accept")


@dataclass(frozen=True, slots=True)
class UpstreamError(Exception):
    """The upstream could not be reached (502) or did not answer in time (504)."""

    status: int
    cause: str
    detail: str

    def body(self) -> bytes:
        import orjson

        return orjson.dumps(
            {
                "error": "upstream " + ("timeout" if self.status == 504 else "unavailable"),
                "cause": self.cause,
                "detail": self.detail,
            }
        )


def classify(exc: BaseException) -> UpstreamError:
    """Map a client exception to the error the proxy's client gets."""
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError | TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamError(504, "connect_timeout", str(exc) or "connect timed out")
        return UpstreamError(504, "timeout", str(exc) or "upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "connect_failed", str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(502, "disconnected", str(exc) or "upstream closed the connection")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(502, type(exc).__name__, str(exc))
    raise exc


class Upstream:
    """One pooled session to the configured upstream; the target never depends on the Host header."""

    def __init__(self, settings: ProxySettings) -> None:
        self.base = settings.upstream
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.pool_size,
            limit_per_host=s.pool_size,
            ttl_dns_cache=300,
            enable_cleanup_closed=False,
            family=socket.AF_UNSPEC,
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

    async def reachable(self, timeout_s: float = 1.0) -> bool:
        """Readiness: can a TCP connection to the upstream be opened?"""
        from urllib.parse import urlsplit

        parts = urlsplit(self.base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port), timeout_s
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True
