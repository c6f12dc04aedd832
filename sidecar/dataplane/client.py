"""The data plane's pooled HTTP/1.1 client to its upstream, on httptools.

aiohttp's client cost about 150 µs of CPU per call here, most of the
sidecar's budget; this one writes the request in one buffer, parses the
answer with httptools (the parser uvicorn uses) and keeps connections
pooled, for about a fifth of that. One pool of keep-alive connections, plain
or TLS, serves both kinds of call: `Pool.request` (a whole body in, a whole
answer out: inference calls) and `Pool.stream` (both bodies streamed with
back-pressure: everything else). Failures raise UpstreamError.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httptools

from sidecar.dataplane.errors import (
    UpstreamError,
    bad_response,
    connect_error,
    disconnected,
    timeout,
)
from sidecar.types import RawHeaders

# A streamed answer stops reading from the upstream past this much unsent body,
# and starts again below the low mark (the same marks as the server's request bodies).
HIGH_WATER = 1 << 18
LOW_WATER = 1 << 16
_NO_BODY_STATUS = frozenset({204, 304})
_FRAMING = (b"content-length", b"transfer-encoding")


def _ends_with_connection(status: int, headers: RawHeaders) -> bool:
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


class _Conn(asyncio.Protocol):
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
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(bad_response(exc))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            status = self._parser.get_status_code()
            if self._headers_done and exc is None and _ends_with_connection(status, self._headers):
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

    def __init__(self, conn: _Conn, head_only: bool, timeout_s: float) -> None:
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
    def on_header(self, name: bytes, value: bytes) -> None:
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
        self._chunks.append(body)
        self._buffered += len(body)
        self.last = self._loop.time()
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            assert self._conn.transport is not None
            self._conn.transport.pause_reading()
        self._wakeup()

    def on_message_complete(self) -> None:
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
        if self._head.done() and exc is None and _ends_with_connection(self.status, self.headers):
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
        if self._paused:
            self.last = now  # waiting on our own taker, not on the upstream
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


async def _send_body(
    conn: _Conn, stream: Streamed, body: AsyncIterator[bytes], chunked: bool
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


class Pool:
    """Keep-alive connections to one host:port, plain or TLS, reused last-in first-out.

    At most `size` idle connections are kept; calls beyond them open more,
    which close when their call ends.
    """

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        connect_timeout_s: float,
        timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.host_header = (
            f"{host}:{port}".encode() if ":" not in host else f"[{host}]:{port}".encode()
        )
        self.tls = tls
        self._size = size
        self._idle: list[_Conn] = []
        self._connect_timeout = connect_timeout_s
        self._timeout = timeout_s
        # Answers are timed by one sweep over the calls in flight, not a timer armed and
        # cancelled per call (that showed in the per-request CPU); a late answer fails at
        # most a quarter of the timeout (and never more than 0.25 s) after its deadline.
        self._inflight: dict[asyncio.Future[Answer], float] = {}
        self._sweep_every = min(timeout_s / 4, 0.25)
        self._sweeper: asyncio.TimerHandle | None = None

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        tls = self.tls
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    _Conn,
                    self.host,
                    self.port,
                    ssl=tls,
                    server_hostname=self.host if tls is not None else None,
                ),
                self._connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            raise connect_error(exc, f"{self.host}:{self.port}", self._connect_timeout) from None
        return conn

    async def request(self, head: bytes, body: bytes) -> Answer:
        """Send a request whose head (request line and headers, ending in a blank line) is built by the caller."""
        data = head + body if body else head
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(conn, data)
            except UpstreamError as err:
                # A pooled connection the upstream had already closed: try a fresh one once.
                if err.cause != "disconnected" or conn.got_bytes:
                    raise
        return await self._exchange(await self._connect(), data)

    async def _exchange(self, conn: _Conn, data: bytes) -> Answer:
        # The connection's own loop: asyncio.get_running_loop() costs a getpid() syscall.
        loop = conn.loop
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._inflight[waiter] = loop.time() + self._timeout
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)
        done = False
        try:
            conn.start(data, waiter)
            answer = await waiter
            done = True
            return answer
        finally:
            del self._inflight[waiter]
            if done and conn.keep_alive and not conn.closed and len(self._idle) < self._size:
                self._idle.append(conn)
            else:
                conn.close()

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for waiter, deadline in list(self._inflight.items()):
            if deadline <= now and not waiter.done():
                waiter.set_exception(timeout(self._timeout))
        self._sweeper = (
            loop.call_later(self._sweep_every, self._sweep, loop) if self._inflight else None
        )

    @contextlib.asynccontextmanager
    async def stream(
        self, head: bytes, body: AsyncIterator[bytes] | None, chunked: bool, head_only: bool
    ) -> AsyncIterator[Streamed]:
        """Send a request head, then `body` as it arrives (chunk-framed if `chunked`).

        Yields once the answer's head is in; the connection goes back to the
        pool when the block ends, if the answer was read to its end and the
        whole request body was sent.
        """
        conn, stream, sender = await self._open_stream(head, body, chunked, head_only)
        try:
            yield stream
        finally:
            self._end_stream(conn, stream, sender)

    async def _open_stream(
        self, head: bytes, body: AsyncIterator[bytes] | None, chunked: bool, head_only: bool
    ) -> tuple[_Conn, Streamed, asyncio.Task[None] | None]:
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            stream, sender = self._start_stream(conn, head, body, chunked, head_only)
            try:
                await stream._head
                return conn, stream, sender
            except UpstreamError as err:
                self._end_stream(conn, stream, sender)
                # As for buffered calls; but a body already taken from the client cannot be sent twice.
                if err.cause != "disconnected" or conn.got_bytes or body is not None:
                    raise
            except BaseException:
                self._end_stream(conn, stream, sender)
                raise
        conn = await self._connect()
        stream, sender = self._start_stream(conn, head, body, chunked, head_only)
        try:
            await stream._head
        except BaseException:
            self._end_stream(conn, stream, sender)
            raise
        return conn, stream, sender

    def _start_stream(
        self,
        conn: _Conn,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
        head_only: bool,
    ) -> tuple[Streamed, asyncio.Task[None] | None]:
        stream = Streamed(conn, head_only, self._timeout)
        conn.start_stream(head, stream)
        if body is None:
            stream.body_sent = True
            return stream, None
        # Its own task: an upstream may answer (or stream its answer) while the body still comes.
        return stream, conn.loop.create_task(_send_body(conn, stream, body, chunked))

    def _end_stream(self, conn: _Conn, stream: Streamed, sender: asyncio.Task[None] | None) -> None:
        stream._stop()
        if sender is not None and not sender.done():
            sender.cancel()
        conn.end_stream()
        if (
            stream.complete
            and stream.keep_alive
            and stream.body_sent
            and stream.error is None
            and not conn.closed
            and len(self._idle) < self._size
        ):
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._idle:
            conn.close()
        self._idle.clear()
