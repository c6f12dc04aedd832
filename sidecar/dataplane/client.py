"""A lean pooled HTTP/1.1 client for the buffered inference path.

aiohttp's client cost about 150 µs of CPU per call here, most of the
sidecar's budget; this one writes the request in one buffer, parses the
answer with httptools (the parser uvicorn uses) and keeps connections
pooled, for about a fifth of that. It serves only plain-HTTP upstreams and
whole bodies; streamed and HTTPS calls go through aiohttp (sidecar.dataplane.upstream).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httptools

from sidecar.dataplane.errors import UpstreamError


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_headers",
        "_headers_done",
        "_parser",
        "_waiter",
        "closed",
        "got_bytes",
        "keep_alive",
        "loop",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.closed = False
        self.keep_alive = True
        self.got_bytes = False
        self._headers_done = False

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
            self._fail(UpstreamError(502, "bad_response", f"unparseable upstream answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._headers_done and exc is None:
                # A body delimited by the connection's end (no length, not chunked) is complete now.
                self.keep_alive = False
                self._waiter.set_result(
                    Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))
                )
            else:
                self._fail(
                    UpstreamError(
                        502, "disconnected", str(exc) if exc else "upstream closed the connection"
                    )
                )

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

    def start(self, data: bytes, waiter: asyncio.Future[Answer]) -> None:
        self._waiter = waiter
        self._headers = []
        self._body = []
        self.got_bytes = False
        self._headers_done = False
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one host:port, reused last-in first-out."""

    def __init__(
        self, host: str, port: int, size: int, connect_timeout_s: float, timeout_s: float
    ) -> None:
        self.host = host
        self.port = port
        self.host_header = (
            f"{host}:{port}".encode() if ":" not in host else f"[{host}]:{port}".encode()
        )
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
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, self.host, self.port), self._connect_timeout
            )
        except TimeoutError:
            raise UpstreamError(
                504,
                "connect_timeout",
                f"no connection to {self.host}:{self.port} within {self._connect_timeout}s",
            ) from None
        except OSError as exc:
            raise UpstreamError(
                502,
                "connect_failed",
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}",
            ) from None
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
                waiter.set_exception(
                    UpstreamError(
                        504, "timeout", f"upstream did not answer within {self._timeout}s"
                    )
                )
        self._sweeper = (
            loop.call_later(self._sweep_every, self._sweep, loop) if self._inflight else None
        )

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._idle:
            conn.close()
        self._idle.clear()
