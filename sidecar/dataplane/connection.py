"""One keep-alive HTTP/1.1 connection to the upstream (plain or TLS), parsed with httptools.

It answers a buffered call itself (`start`: one write, the whole answer back
through a future) and hands its bytes to a `Streamed` answer for a streamed
one (`start_stream`). The pool (`client.py`) owns connections between calls.

An upstream that sends bytes after an answer's declared end (or while no call
is in flight) has lost the framing: the connection is closed, never reused, so
those bytes cannot become the start of the next call's answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httptools

from sidecar.dataplane.errors import (
    UpstreamError,
    bad_response,
    disconnected,
)
from sidecar.types import RawHeaders

if TYPE_CHECKING:
    from sidecar.dataplane.streamed import Streamed

# A streamed answer stops reading from the upstream past this much unsent body,
# and starts again below the low mark (the same marks as the server's request bodies).
HIGH_WATER = 1 << 18
LOW_WATER = 1 << 16
_NO_BODY_STATUS = frozenset({204, 304})
_FRAMING = (b"content-length", b"transfer-encoding")


def ends_with_connection(status: int, headers: RawHeaders) -> bool:
    """Is this answer's body delimited by the connection's end (no length, not chunked)?

    Only then is a connection closed after the head a complete answer; with a
    length or chunks still owed, it is a cut one.
    """
    if status in _NO_BODY_STATUS:
        return False
    return not any(name.lower() in _FRAMING for name, _ in headers)


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_drained",
        "_headers",
        "_headers_done",
        "_own_parser",
        "_parser",
        "_stream",
        "_waiter",
        "_write_paused",
        "closed",
        "got_bytes",
        "keep_alive",
        "loop",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # A streamed call swaps in its own parser for its duration, so the buffered
        # path's callbacks below carry no test for which kind of call is running.
        self._own_parser = self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._stream: Streamed | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.closed = False
        self.keep_alive = True
        self.got_bytes = False
        self._headers_done = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.loop = asyncio.get_running_loop()
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if self._stream is None and (waiter is None or waiter.done()):
            self.close()  # bytes while no call is in flight: the framing is lost
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(bad_response(exc))
            self.close()
            return
        if not self.keep_alive:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            status = self._parser.get_status_code()
            if self._headers_done and exc is None and ends_with_connection(status, self._headers):
                # A body delimited by the connection's end (no length, not chunked) is complete now.
                self.keep_alive = False
                self._waiter.set_result(Answer(status, self._headers, b"".join(self._body)))
            else:
                self._fail(disconnected(exc))
        if self._stream is not None:
            self._stream._lost(exc)
        self.resume_writing()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is not None and waiter.done():
            # A second message after the answer, in the same read: not reusable, and
            # its headers must not land in the list the answer holds.
            self.keep_alive = False
            self._headers = []
            self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue): the final one follows on this connection.
            self._headers_done = False
            self._headers = []
            self._body = []
            return
        self.keep_alive = self._parser.should_keep_alive()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter.set_result(Answer(status, self._headers, body))

    def _fail(self, err: UpstreamError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(err)
        if self._stream is not None:
            self._stream._fail(err)

    def start(self, data: bytes, waiter: asyncio.Future[Answer]) -> None:
        self._waiter = waiter
        self._headers = []
        self._body = []
        self.got_bytes = False
        self._headers_done = False
        assert self.transport is not None
        self.transport.write(data)

    def start_stream(self, head: bytes, stream: Streamed) -> None:
        self._waiter = None
        self._stream = stream
        self._parser = stream.parser
        self.got_bytes = False
        assert self.transport is not None
        self.transport.write(head)

    def end_stream(self) -> None:
        self._stream = None
        self._parser = self._own_parser

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the upstream is not reading what was written."""
        while self._write_paused and not self.closed:
            self._drained = self.loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
