"""One request on a client connection, and the means to answer it (`Exchange`).

The connection (`server.py`) feeds it the request body as it arrives, and the
data plane (`http.py`) reads the body from it (whole, or as it comes, with
back-pressure) and answers through it: in one write, or streamed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING

from sidecar.types import RawHeaders

if TYPE_CHECKING:
    from sidecar.dataplane.server import HttpConnection

HIGH_WATER = 1 << 18
LOW_WATER = 1 << 16
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} \r\n".encode()


class ClientGone(Exception):
    """The client closed the connection before its request was answered."""


class Exchange:
    """One request on a connection, and the means to answer it."""

    __slots__ = (
        "_body",
        "_buffered",
        "_chunked_out",
        "_conn",
        "_continue",
        "_waiter",
        "complete",
        "has_body",
        "head_only",
        "headers",
        "keep_alive",
        "method",
        "path",
        "peer",
        "started",
        "target",
    )

    def __init__(
        self,
        conn: HttpConnection,
        method: str,
        target: bytes,
        path: str,
        headers: RawHeaders,
        keep_alive: bool,
        has_body: bool,
        expect_continue: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target
        self.path = path
        self.headers = headers
        self.peer = conn.peer
        self.keep_alive = keep_alive
        self.has_body = has_body
        self.head_only = method == "HEAD"
        self.complete = not has_body
        self.started = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue
        self._chunked_out = False

    # -- request body (fed by the connection) --
    def _feed(self, chunk: bytes) -> None:
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _more(self) -> None:
        if self._continue:
            self._continue = False
            self._conn.write(_CONTINUE)
        conn = self._conn
        if conn.closed or conn._halted:
            raise ClientGone
        self._waiter = conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        # Halted: this body was refused (it broke, or stalled past its deadline).
        if (conn.closed or conn._halted) and not self.complete:
            raise ClientGone

    async def wait_body(self) -> None:
        """Wait for the body's first bytes, or its end.

        A streamed call takes an upstream connection only after this: a client
        that sends headers and then nothing holds none (and meets the body deadline).
        """
        while not self._body and not self.complete:
            await self._more()

    def _take(self) -> bytes:
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER:
            self._conn.resume_reading()
        return chunk

    async def read_all(self, limit: int) -> bytes | None:
        """The whole request body, or None once it passes `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        while True:
            while self._body:
                chunk = self._take()
                size += len(chunk)
                if size > limit:
                    return None
                parts.append(chunk)
            if self.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await self._more()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives."""
        while True:
            while self._body:
                yield self._take()
            if self.complete:
                return
            await self._more()

    # -- response --
    def respond(self, status: int, headers: RawHeaders, body: bytes) -> None:
        """Answer in one write; Content-Length is set when the headers lack it."""
        parts = [status_line(status)]
        has_length = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            parts += (name, b": ", value, b"\r\n")
        if not has_length and status not in _NO_BODY_STATUS:
            parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if body and not self.head_only:
            parts.append(body)
        self.started = True
        self._conn.write(b"".join(parts))
        self._conn.exchange_done(self)

    async def start(self, status: int, headers: RawHeaders) -> None:
        """Begin a streamed answer: chunked unless the headers carry a length."""
        parts = [status_line(status)]
        has_length = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            parts += (name, b": ", value, b"\r\n")
        bodiless = self.head_only or status in _NO_BODY_STATUS or 100 <= status < 200
        if not has_length and not bodiless:
            if self._conn.http11:
                self._chunked_out = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 body ends with the connection
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.started = True
        await self._conn.send(b"".join(parts))

    async def write(self, chunk: bytes) -> None:
        if not chunk or self.head_only:
            return
        if self._chunked_out:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        await self._conn.send(chunk)

    def end(self) -> None:
        if self._chunked_out and not self.head_only:
            self._conn.write(b"0\r\n\r\n")
        self._conn.exchange_done(self)
