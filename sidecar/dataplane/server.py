"""The data plane's HTTP/1.1 server: an asyncio protocol on httptools.

Measured, not assumed: a uvicorn ASGI app that answers a constant costs
about 70 µs of CPU per request on this kind of machine, and 2-3 times that
at a low steady rate once caches are cold; this protocol serves the same in
about 40. It hands each request to the data plane as an `Exchange` (no ASGI
message dicts), writes a whole answer in one syscall, and cancels the
handler the moment the client goes away, so the upstream call is abandoned
with it. Pipelined requests are answered in order; request bodies are
streamed with back-pressure (reading pauses past a high-water mark).

The request and its answer are `Exchange`s (exchange.py); the limits and the
sweep that keeps the deadlines are in limits.py.

No client can hold more than the documented limits (`Limits`, the README's
"Data-plane limits"): a request target past `max_target_bytes` is a 414, a
header section past `max_header_bytes` or `max_headers` a 431, a head not in
within `header_timeout_s` or a body that stalls past `body_timeout_s` a 408 (a
connection that sent no byte at all is closed without one),
and connections past `max_connections` get a 503 and are closed. Deadlines are
kept by one sweep over all connections (`IdleReaper`), not a timer per request.
Whatever the parser cannot accept is a 4xx (505 for an HTTP major version other
than 1), answered after the requests pipelined before it, then the connection
closes. An `Upgrade: h2c` offer is ignored (RFC 9110 §7.8) and the request
served over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import httptools

from sidecar.dataplane.exchange import ClientGone, Exchange
from sidecar.dataplane.limits import IdleReaper, Limits, Refused, error_answer, origin_form
from sidecar.types import RawHeaders

__all__ = ["ClientGone", "Exchange", "HttpConnection", "IdleReaper", "Limits", "serve"]

log = logging.getLogger("sidecar.dataplane.server")

LINGER_S = 2.0
_TOO_LARGE = "request header section too large (proxy.max_header_bytes, proxy.max_headers)"


Handler = Callable[[Exchange], Awaitable[None]]


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and runs the handler for each, in order."""

    def __init__(self, handler: Handler, reaper: IdleReaper) -> None:
        self.loop = reaper.loop
        self._handler = handler
        self._reaper = reaper
        limits = reaper.limits
        self._max_target = limits.max_target_bytes
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self.idle_since: float | None = None
        # Deadlines (read by the reaper's sweep): waiting for a head from the start, and
        # the head's number; reads so far (a stalled body reads nothing); the sweep's note.
        self.in_head = True
        self.head_seq = 0
        self.reads = 0
        self.mark = -1
        self.mark_at = 0.0
        self._head_recv = 0
        self._read_len = 0
        self._halted = False
        self._rejection: bytes | None = None
        self._h2c: Exchange | None = None
        self._h2c_framing = b""
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.closed = False
        self.http11 = True
        self._url = b""
        self._headers: RawHeaders = []
        self._parsing: Exchange | None = None
        self._active: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._queue: deque[Exchange] = deque()
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = t
        if len(self._reaper.connections) >= self._reaper.limits.max_connections:
            # Accepted and answered, so the client learns why (nginx's limit_conn does the same).
            self.closed = True
            t.write(error_answer(503, "too many connections (proxy.max_connections)"))
            t.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        self._reaper.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._halted:
            return
        self.reads += 1
        self._read_len = len(data)
        while True:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as up:
                data = self._upgraded(data[up.args[0] :])
                if data:
                    continue
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, Refused):
                    self._reject(cause.status, cause.message)
                else:
                    self._reject(400, f"malformed HTTP request: {exc}")
            except httptools.HttpParserError as exc:
                # llhttp names the version ("Invalid HTTP version") or the HTTP/2 preface (PRI).
                text = str(exc)
                status = 505 if "version" in text or "PRI" in text else 400
                self._reject(status, f"malformed HTTP request: {text}")
            else:
                if self.in_head:
                    # A header value is held by the parser until it ends: bound what it holds.
                    if self._head_recv < 0:
                        self._head_recv = 0  # began in this read (not counted: it may hold a body)
                    else:
                        self._head_recv += len(data)
                        if self._head_recv > self._max_header_bytes + self._max_target:
                            self._reject(431, _TOO_LARGE)
            return

    def _upgraded(self, rest: bytes) -> bytes:
        """After an Upgrade the parser paused at: an h2c offer is ignored; the rest is parsed as HTTP/1.1."""
        ex, self._h2c = self._h2c, None
        if ex is None:
            return rest
        # The parser skipped the offer's body (it takes what follows an Upgrade for the new
        # protocol): a parser of its own reads it into the exchange, and the connection
        # closes after the answer (what follows that body is not looked at).
        self._parsing = ex
        self._parser = httptools.HttpRequestParser(_BodyOnly(self))
        self._parser.feed_data(b"POST / HTTP/1.1\r\n" + self._h2c_framing + b"\r\n\r\n")
        return rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._reaper.connections.discard(self)
        for ex in (self._active, self._parsing):
            if ex is not None:
                ex._wake()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_recv = -1
        self.idle_since = None
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_target:
            raise Refused(414, "request target too long (proxy.max_target_bytes)")

    def on_header(self, name: bytes, value: bytes) -> None:
        # No accounting here (it showed in the per-request CPU): data_received bounds what a
        # head holds while it comes, on_headers_complete checks the limits exactly.
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self._parser
        self.in_head = False
        self.head_seq += 1
        version = p.get_http_version()
        if version[0] != "1":
            raise Refused(505, f"HTTP/{version} is not supported on this port; use HTTP/1.1")
        self.http11 = version == "1.1"
        url = self._url
        if url[0] != 0x2F:  # not "/": absolute-form (or "*", or nothing forwardable)
            origin = origin_form(url)
            if origin is None:
                raise Refused(400, "request target is neither origin-form nor absolute-form")
            url = origin
        q = url.find(b"?")
        raw_path = url if q < 0 else url[:q]
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        headers = self._headers
        if len(headers) > self._max_headers or (
            # Only a head that spans reads, or came in a read larger than the limit, can be
            # over it: only those are summed.
            (self._head_recv >= 0 or self._read_len > self._max_header_bytes)
            and sum(len(n) + len(v) for n, v in headers) > self._max_header_bytes
        ):
            raise Refused(431, _TOO_LARGE)
        has_body = expect = chunked = spaced = False
        hosts = 0
        for name, value in headers:
            if name == b"content-length":
                # llhttp keeps trailing optional whitespace (and refuses an empty value):
                # trimmed below.
                has_body = value != b"0"
                spaced = value[-1] in b" \t"
            elif name == b"transfer-encoding":
                has_body = chunked = True
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
            elif name == b"host":
                hosts += 1
        if hosts > 1 or (hosts == 0 and self.http11):
            # RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request.
            raise Refused(400, "an HTTP/1.1 request carries exactly one Host header")
        if spaced:
            self._headers = headers = [
                (n, v.strip() if n == b"content-length" else v) for n, v in headers
            ]
            has_body = any(n == b"content-length" and v != b"0" for n, v in headers) or chunked
        upgrade = p.should_upgrade()
        if upgrade and not self._h2c_offer():
            raise Refused(501, "protocol upgrades other than h2c (ignored) are not proxied")
        ex = Exchange(
            self,
            p.get_method().decode("latin-1"),
            url,
            path,
            headers,
            p.should_keep_alive() and not (upgrade and has_body),
            has_body,
            expect,
        )
        if upgrade and has_body:
            # Its body is read once the parser stops at the upgrade.
            self._h2c = ex
            length = b"".join(v for n, v in headers if n == b"content-length")
            self._h2c_framing = (
                b"transfer-encoding: chunked" if chunked else b"content-length: " + length
            )
        else:
            self._parsing = ex
        self._queue.append(ex)
        if self._task is None:
            self._task = self.loop.create_task(self._serve())
        elif self._wake is not None:
            wake, self._wake = self._wake, None
            wake.set_result(None)
        else:
            # Pipelined: answered in order; stop reading until its turn comes.
            self.pause_reading()

    def _h2c_offer(self) -> bool:
        """Is this Upgrade an offer of h2c (which is ignored), and not CONNECT or another protocol?"""
        if self._parser.get_method() == b"CONNECT":
            return False
        for name, value in self._headers:
            if name == b"upgrade":
                return all(
                    t.strip().lower() in (b"h2c", b"http/2.0")
                    for t in value.split(b",")
                    if t.strip()
                )
        return False

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing._finish()
            self._parsing = None

    # -- running exchanges --
    async def _serve(self) -> None:
        """Answer this connection's requests in order, for as long as it lives.

        One task per connection rather than per request: creating a task (and
        registering it in asyncio's task set) showed in the per-request CPU.
        """
        queue = self._queue
        while not self.closed:
            if not queue:
                if self._rejection is not None:
                    # What was pipelined before the refused request is answered: now the refusal.
                    self.write(self._rejection)
                    self._linger()
                    return
                self._wake = self.loop.create_future()
                await self._wake
                continue
            ex = queue.popleft()
            if not queue and not self._halted:
                self.resume_reading()
            self._active = ex
            try:
                await self._handler(ex)
            except (asyncio.CancelledError, ClientGone):
                if not self._halted:  # a refusal's lingering close ends the connection
                    self.close()
                return
            except Exception:
                log.exception("data plane handler failed for %s %s", ex.method, ex.path)
                if ex.started:
                    self.close()
                    return
                ex.keep_alive = False
                ex.respond(
                    500,
                    [(b"content-type", b"application/json")],
                    b'{"error": "internal proxy error"}',
                )
                return
            if not ex.started:
                ex.respond(500, [(b"content-type", b"application/json")], b'{"error": "no answer"}')

    def exchange_done(self, ex: Exchange) -> None:
        if ex is not self._active:
            return
        self._active = None
        # Without keep-alive, or when the answer went out before the request body was
        # read (the rest of it cannot be told apart from a next request), end here.
        if not ex.keep_alive or self.closed or not ex.complete:
            self.close()
        elif not self._queue and not self.in_head:
            self.idle_since = self.loop.time()

    def held_back(self) -> bool:
        """Is reading paused by us (pipelining, back-pressure): no client deadline runs then."""
        return self._paused

    def reading_body(self) -> bool:
        """Is a request body owed by the client now (not held back by us, or by a 100 not yet sent)?"""
        ex = self._parsing
        return ex is not None and not self._paused and not ex._continue

    def timed_out(self) -> None:
        """Called by the sweep: the head or the body did not come in time."""
        if self.in_head and self.reads == 0:
            # Not one byte came: there is no request to answer. A client that opened the
            # connection ahead of need (a pool, a browser's preconnect) and sends its request
            # as a 408 leaves would read that 408 as the answer to it, and a POST is not
            # retried. Closed without a word, as nginx closes it.
            self.close()
        elif self.in_head:
            self._reject(408, "request head not received within proxy.header_timeout_s")
        else:
            self._reject(408, "request body stalled past proxy.body_timeout_s")

    def _reject(self, status: int, message: str) -> None:
        """Refuse the request being read: after the answers to those before it, then close."""
        if self.closed or self._halted:
            return
        self._halted = True
        self.pause_reading()
        self._rejection = error_answer(status, message)
        broken, self._parsing = self._parsing, None
        if broken is not None:
            # Its head was taken and its body broke: it is the refused request.
            if broken is self._active:
                broken._wake()  # its handler stops waiting for the body, and the upstream call
                if not broken.started:
                    broken.started = True
                    self.write(self._rejection)
                    self._linger()
                else:
                    self.close()
                return
            if broken in self._queue:
                self._queue.remove(broken)
        if self._active is None and not self._queue:
            self.write(self._rejection)
            self._linger()

    def _linger(self) -> None:
        """Close after a refusal without losing it (nginx's lingering close).

        Closing a socket with unread input makes the kernel send a reset, which can
        destroy the answer before the client reads it (a client still sending a 16 MB
        URL, say). So: end our side, discard what still comes, close once the client
        does or LINGER_S later.
        """
        t = self.transport
        if t is None or self.closed:
            return
        try:
            t.write_eof()
        except (NotImplementedError, RuntimeError, OSError):
            self.close()
            return
        self._halted = True  # what still comes is read and dropped
        self.resume_reading()
        self.loop.call_later(LINGER_S, self.close)

    # -- transport helpers --
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ClientGone
        self.write(data)
        if self._drained is not None:
            await self._drained
            if self.closed:
                raise ClientGone

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


async def serve(
    handler: Handler, sock: socket.socket, limits: Limits | None = None, backlog: int = 2048
) -> tuple[asyncio.Server, IdleReaper]:
    """Start serving `handler` on an already-bound socket; stop the reaper with the server."""
    loop = asyncio.get_running_loop()
    reaper = IdleReaper(loop, limits or Limits())
    server = await loop.create_server(
        lambda: HttpConnection(handler, reaper), sock=sock, backlog=backlog
    )
    return server, reaper


class _BodyOnly:
    """Parser callbacks for the body of an h2c offer, which the first parser skipped."""

    __slots__ = ("_conn",)

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn

    def on_body(self, body: bytes) -> None:
        self._conn.on_body(body)

    def on_message_complete(self) -> None:
        self._conn.on_message_complete()
