"""What the proxy's client gets when the upstream fails: 502 (unreachable) or 504 (too slow)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import orjson


@dataclass(frozen=True, slots=True)
class UpstreamError(Exception):
    """The upstream could not be reached (502) or did not answer in time (504)."""

    status: int
    cause: str
    detail: str

    def body(self) -> bytes:
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
    if isinstance(exc, aiohttp.ClientSSLError):
        # Before ClientConnectorError, which the certificate errors also are.
        return UpstreamError(502, "tls", str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "connect_failed", str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(502, "disconnected", str(exc) or "upstream closed the connection")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(502, type(exc).__name__, str(exc))
    raise exc
