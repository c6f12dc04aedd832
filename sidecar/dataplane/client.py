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
from collections.abc import AsyncIterator

from sidecar.dataplane.connection import Answer, Connection
from sidecar.dataplane.errors import (
    UpstreamError,
    busy,
    connect_error,
    timeout,
)
from sidecar.dataplane.streamed import Streamed, send_body

__all__ = ["Answer", "Pool", "Streamed"]


class Pool:
    """Keep-alive connections to one host:port, plain or TLS, reused last-in first-out.

    At most `size` idle connections are kept; calls beyond them open more,
    which close when their call ends. Streamed calls hold at most `max_streams`
    connections at once (past it: 503 `busy`), so slow pass-through clients
    cannot take every connection the upstream will accept from inference calls.
    """

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        connect_timeout_s: float,
        timeout_s: float,
        tls: ssl.SSLContext | None = None,
        max_streams: int = 256,
    ) -> None:
        self.host = host
        self.port = port
        self.host_header = (
            f"{host}:{port}".encode() if ":" not in host else f"[{host}]:{port}".encode()
        )
        self.tls = tls
        self._size = size
        self._max_streams = max_streams
        self._streams = 0
        self._idle: list[Connection] = []
        self._connect_timeout = connect_timeout_s
        self._timeout = timeout_s
        # Answers are timed by one sweep over the calls in flight, not a timer armed and
        # cancelled per call (that showed in the per-request CPU); a late answer fails at
        # most a quarter of the timeout (and never more than 0.25 s) after its deadline.
        self._inflight: dict[asyncio.Future[Answer], float] = {}
        self._sweep_every = min(timeout_s / 4, 0.25)
        self._sweeper: asyncio.TimerHandle | None = None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        tls = self.tls
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    Connection,
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

    async def _exchange(self, conn: Connection, data: bytes) -> Answer:
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
        if self._streams >= self._max_streams:
            raise busy(self._max_streams)
        self._streams += 1
        try:
            conn, stream, sender = await self._open_stream(head, body, chunked, head_only)
            try:
                yield stream
            finally:
                self._end_stream(conn, stream, sender)
        finally:
            self._streams -= 1

    async def _open_stream(
        self, head: bytes, body: AsyncIterator[bytes] | None, chunked: bool, head_only: bool
    ) -> tuple[Connection, Streamed, asyncio.Task[None] | None]:
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
        conn: Connection,
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
        return stream, conn.loop.create_task(send_body(conn, stream, body, chunked))

    def _end_stream(
        self, conn: Connection, stream: Streamed, sender: asyncio.Task[None] | None
    ) -> None:
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
