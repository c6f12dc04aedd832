"""A streamed call's answer, and the sender of a streamed request body.

Both bodies pass through with back-pressure, never held whole.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import httptools

from sidecar.dataplane.connection import HIGH_WATER, LOW_WATER, Connection, ends_with_connection
from sidecar.dataplane.errors import (
    disconnected,
    timeout,
)
from sidecar.types import RawHeaders


class Streamed:
    """A streamed answer: `status` and raw `headers`, then its body chunks by `async for`.

    The body is read from the upstream only as fast as it is taken: past
    HIGH_WATER bytes not yet taken, reading pauses until they drop below
    LOW_WATER. The call is timed out (504) when the upstream leaves it idle
    for the pool's timeout: from the last request byte sent to the response
    head, then between body chunks. Time spent paused because the taker is
    slow does not count. Iteration raises UpstreamError when the upstream fails.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_head",
        "_head_only",
        "_loop",
        "_paused",
        "_timeout",
        "_timer",
        "_wake",
        "body_sent",
        "complete",
        "error",
        "headers",
        "keep_alive",
        "last",
        "parser",
        "status",
    )

    def __init__(self, conn: Connection, head_only: bool, timeout_s: float) -> None:
        loop = conn.loop
        self._conn = conn
        self._loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: RawHeaders = []
        self._head: asyncio.Future[None] = loop.create_future()
        self._head_only = head_only
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.body_sent = False
        self.last = loop.time()
        self._timeout = timeout_s
        self._timer: asyncio.TimerHandle | None = loop.call_later(timeout_s, self._check_idle)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            self.keep_alive = False  # bytes after the answer's end: the connection is not reused

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:  # not those of a message after the answer's end
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 or self._head.done():
            return  # an interim answer: its headers are dropped when it completes
        self.status = status
        self.last = self._loop.time()
        if self._head_only:
            # A HEAD answer announces a body it never sends, and httptools cannot be told
            # to expect none: the answer ends here and the connection is not reused.
            self.complete = True
        self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return  # after the answer's end: not part of it
        self._chunks.append(body)
        self._buffered += len(body)
        self.last = self._loop.time()
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            assert self._conn.transport is not None
            self._conn.transport.pause_reading()
        self._wakeup()

    def on_message_complete(self) -> None:
        if self.complete and not self._head_only:
            return  # a message after the answer's end (on_message_begin has marked it)
        if 100 <= self.parser.get_status_code() < 200:
            self.headers = []
            return
        self.keep_alive = self.parser.should_keep_alive() and not self._head_only
        self.complete = True
        self._wakeup()

    # connection events
    def _lost(self, exc: BaseException | None) -> None:
        if self.complete or self.error is not None:
            return
        if self._head.done() and exc is None and ends_with_connection(self.status, self.headers):
            self.complete = True
            self._wakeup()
        else:
            self._fail(disconnected(exc))

    def _fail(self, err: BaseException) -> None:
        if self.complete or self.error is not None:
            return
        self.error = err
        if not self._head.done():
            self._head.set_exception(err)
        self._wakeup()

    def _wakeup(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    def _check_idle(self) -> None:
        self._timer = None
        if self.complete or self.error is not None:
            return
        now = self._loop.time()
        if self._paused or (not self.body_sent and not self._conn._write_paused):
            # Waiting on our own taker, or on the client's body (the server's body
            # deadline is for that), not on the upstream.
            self.last = now
        idle = now - self.last
        if idle >= self._timeout:
            self._fail(timeout(self._timeout, "send more" if self._head.done() else "answer"))
            self._conn.close()
        else:
            self._timer = self._loop.call_later(self._timeout - idle, self._check_idle)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._head.done() and not self._head.cancelled():
            self._head.exception()  # retrieved: a failure nobody awaited is not logged

    # the body, for the taker
    def __aiter__(self) -> Streamed:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                raise StopAsyncIteration
            self._wake = self._loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < LOW_WATER:
            self._paused = False
            self.last = self._loop.time()
            if not self._conn.closed:
                assert self._conn.transport is not None
                self._conn.transport.resume_reading()
        return chunk


async def send_body(
    conn: Connection, stream: Streamed, body: AsyncIterator[bytes], chunked: bool
) -> None:
    """Write a streamed request body as it arrives, waiting whenever the upstream is not reading."""
    try:
        async for chunk in body:
            if conn.closed:
                return
            if not chunk:
                continue
            if chunked:
                conn.write(b"%x\r\n" % len(chunk))
                conn.write(chunk)
                conn.write(b"\r\n")
            else:
                conn.write(chunk)
            stream.last = conn.loop.time()
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
        stream.body_sent = True
    except Exception as exc:
        # The client's body failed (it went away, or sent too little): the call is void.
        stream._fail(exc)
        conn.close()
