"""What one client of the data plane may hold (README, "Data-plane limits").

`Limits` (from the proxy settings), `Refused` (a request past them, raised from
a parser callback), the error answer written then, the absolute-form target
rewrite, and `IdleReaper`: the one sweep that keeps every connection's deadlines.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.dataplane.exchange import status_line

if TYPE_CHECKING:
    from sidecar.config import ProxySettings
    from sidecar.dataplane.server import HttpConnection


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may hold (defaults modelled on nginx's and Envoy's edge defaults)."""

    max_target_bytes: int = 8 * 1024
    max_header_bytes: int = 60 * 1024
    max_headers: int = 100
    header_timeout_s: float = 20.0
    body_timeout_s: float = 20.0
    idle_timeout_s: float = 75.0
    max_connections: int = 1024

    @classmethod
    def of(cls, proxy: ProxySettings) -> Limits:
        return cls(
            max_target_bytes=proxy.max_target_bytes,
            max_header_bytes=proxy.max_header_bytes,
            max_headers=proxy.max_headers,
            header_timeout_s=proxy.header_timeout_s,
            body_timeout_s=proxy.body_timeout_s,
            idle_timeout_s=proxy.idle_timeout_s,
            max_connections=proxy.max_connections,
        )


class Refused(Exception):
    """A request the server will not take: raised from a parser callback, answered with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def error_answer(status: int, message: str) -> bytes:
    """A whole JSON error answer that closes the connection."""
    body = b'{"error": "' + message.replace('"', "'").encode("latin-1", "replace") + b'"}'
    return (
        status_line(status)
        + b"content-type: application/json\r\nconnection: close\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def origin_form(target: bytes) -> bytes | None:
    """The origin-form of an absolute-form request target (`http://host/p?q` -> `/p?q`).

    The authority is dropped: the call goes to the configured upstream whatever
    it names, with the client's Host header passed as sent. None for a target in
    no form the data plane forwards (`*` is kept for OPTIONS).
    """
    if target == b"*":
        return target
    low = target[:8].lower()
    if low.startswith(b"http://"):
        rest = target[7:]
    elif low.startswith(b"https://"):
        rest = target[8:]
    else:
        return None
    for i, c in enumerate(rest):
        if c == 0x2F:  # '/'
            return rest[i:]
        if c == 0x3F:  # '?'
            return b"/" + rest[i:]
    return b"/"


class IdleReaper:
    """Keeps every connection's deadlines with one sweep for all of them.

    A timer armed and cancelled per request showed in the per-request CPU; a sweep
    every quarter of the shortest timeout costs nothing per request. Keep-alive
    connections idle past `idle_timeout_s` are closed (at most 25% late). A
    request head not complete within `header_timeout_s`, or a body with no bytes
    for `body_timeout_s` (while the server is reading it), gets a 408: the sweep
    notes when it first sees a head (or a body's read count) and fires once it is
    unchanged past the timeout, so these fire at most half their timeout late.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits | float) -> None:
        if not isinstance(limits, Limits):
            limits = Limits(idle_timeout_s=limits)
        self.loop = loop
        self.limits = limits
        self.connections: set[HttpConnection] = set()
        self._timeout = limits.idle_timeout_s
        self._period = (
            min(limits.idle_timeout_s, limits.header_timeout_s, limits.body_timeout_s) / 4
        )
        self._handle: asyncio.TimerHandle | None = loop.call_later(self._period, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        limit = now - self._timeout
        header_s = self.limits.header_timeout_s
        body_s = self.limits.body_timeout_s
        for conn in list(self.connections):
            if conn.closed:
                continue
            if conn.idle_since is not None:
                if conn.idle_since < limit:
                    conn.close()
                continue
            # A key that changes whenever the client makes progress that counts.
            if conn.in_head and not conn.held_back():
                key, timeout_s = 2 * conn.head_seq, header_s
            elif conn.reading_body():
                key, timeout_s = 2 * conn.reads + 1, body_s
            else:
                conn.mark = -1
                continue
            if conn.mark != key:
                conn.mark, conn.mark_at = key, now
            elif now - conn.mark_at >= timeout_s:
                conn.timed_out()
        self._handle = self.loop.call_later(self._period, self._sweep)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
