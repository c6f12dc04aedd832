"""The gRPC listener as a transparent HTTP/2 frame tap: one upstream connection per client one.

Why not a gRPC server: grpcio's server side alone cost 490-670 µs of CPU per
call on this project's VM (loadtests/grpc_hops.py), more than the whole HTTP/1.1
data plane. gRPC is HTTP/2, and a proxy that changes nothing in a message need
not terminate it: this one reads the frames (the 9-byte headers, struct), and
forwards them in order on an upstream connection of its own, stream ids 1:1.
DATA, SETTINGS, WINDOW_UPDATE, RST_STREAM, GOAWAY and PRIORITY go through
verbatim, so flow control stays end to end between client and model server, and
cancellation both ways is the peer's RST_STREAM passing through. A PING is
answered on its own hop (`_ping`): it is the connection's, not the call's.

Header blocks are the exception: HPACK is connection state, and the tap edits
some (strips `x-group-attributes`, rewrites `grpc-timeout`, adds
`x-decision-id`), so every block is decoded by a mirror of the receiving peer's
decoder and re-encoded without the dynamic table (headerblock.py).

What the tap answers itself (trailers-only, or trailers after the upstream's
headers): UNAVAILABLE when the upstream cannot be reached (the tap then speaks
HTTP/2 as a server: SETTINGS, their ack, PING acks, until it says GOAWAY),
DEADLINE_EXCEEDED when the deadline it forwarded passes without an answer,
RESOURCE_EXHAUSTED for a message past `proxy.grpc_max_message_bytes` either
way or a call past `proxy.grpc_max_concurrent_rpcs`. Frames of a stream it
ended are dropped, and their DATA given back to the sender's connection window.

Limits, each answered without touching other connections: a frame longer than
the receiver allows (the tap caps SETTINGS_MAX_FRAME_SIZE it forwards at
`MAX_FRAME`), a header block past `proxy.max_header_bytes` (CONTINUATION
floods), a decoded header list past it, HPACK the tap cannot decode, more
streams than `proxy.grpc_max_concurrent_rpcs`: GOAWAY with the RFC's code for a
connection error, RESOURCE_EXHAUSTED for a stream's.

What one client may hold (README, "gRPC", limits): a connection past
`proxy.grpc_max_connections` is answered as an unreachable upstream's are, with
UNAVAILABLE naming the key, and never opens an upstream connection; the upstream
connection is opened only once the client preface (and its SETTINGS) arrived,
within `proxy.header_timeout_s`; a connection with no stream for
`proxy.idle_timeout_s` gets GOAWAY(NO_ERROR) (grpc-core's max_connection_idle).
Both deadlines are kept by one sweep over the listener's connections (`Sweep`),
nothing per frame. Bytes queued toward a client past `_HIGH_WATER` stop the
reading of both its upstream and of the client itself (the tap's own answers to
its frames would otherwise queue without bound toward a client that never reads).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote, urlsplit

from sidecar.dataplane.grpc import frames as f
from sidecar.dataplane.grpc.frames import HEAD, strip_padding
from sidecar.dataplane.grpc.headerblock import (
    CompressionError,
    Decoder,
    Encoder,
    Header,
    HeaderListTooLarge,
    Headers,
)

log = logging.getLogger("sidecar.dataplane.grpc")

# The largest frame either peer may send through the tap (it caps what the other peer
# advertises): a frame is read whole before it is forwarded.
MAX_FRAME = 1 << 20
# The largest HPACK table either encoder may use (the tap keeps a mirror of each).
MAX_TABLE = 64 * 1024
# Bytes a client may send before the upstream connection is up (then reading pauses).
# They are handled in one go once it is up, and a flood of HEADERS the tap refuses itself
# turns into about five times its bytes of answers toward the client: at 1 MiB a client
# that never read got 5 MB queued, past what `_HIGH_WATER` means to bound
# (tests/grpc/test_tap_guard.py); at 256 KiB up to 3 MB. 64 KiB is HTTP/2's initial
# connection window, all the DATA a conforming client may send before it hears from the
# upstream anyway.
_EARLY_LIMIT = 64 << 10
# How long a connection whose upstream could not be reached keeps answering before GOAWAY.
ALONE_S = 1.0
# Streams the tap ended whose late frames it still recognises (and drops).
_GONE = 1024
# How long a connection closed for an error is still read (and discarded) after GOAWAY.
LINGER_S = 1.0
# Outgoing bytes queued on one side past which the other side stops being read.
_HIGH_WATER = 1 << 20
# Connections past the limit answered at once (each for ALONE_S); more are closed unanswered.
_MAX_REFUSING = 64
# Why a client connection is not being read (bits: reading resumes when none is left).
_EARLY = 1  # the upstream connection is not up yet and _EARLY_LIMIT bytes are waiting
_UP_FULL = 2  # bytes toward the upstream past _HIGH_WATER
_OWN_FULL = 4  # bytes toward the client itself past _HIGH_WATER


UNAVAILABLE = 14
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
CANCELLED = 1
OK = 0

_GRPC_TIMEOUT_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}
perf_counter = time.perf_counter


def parse_timeout(value: bytes) -> float | None:
    """A grpc-timeout value in seconds (None when malformed: then it is dropped)."""
    if len(value) < 2 or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _GRPC_TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def format_timeout(seconds: float) -> bytes:
    """At most 8 digits (the spec's limit), rounded up so the upstream never gets less."""
    us = max(1, int(seconds * 1e6) + 1)
    if us < 100_000_000:
        return b"%du" % us
    ms = us // 1000 + 1
    if ms < 100_000_000:
        return b"%dm" % ms
    return b"%dS" % (ms // 1000 + 1)


class Stream:
    """One RPC as the tap follows it."""

    __slots__ = (
        "answered",
        "client_done",
        "code",
        "deadline",
        "deadline_cause",
        "in_head",
        "in_left",
        "infer",
        "method",
        "out_head",
        "out_left",
        "response_started",
        "sid",
        "t0",
        "timer",
        "upstream_done",
    )

    def __init__(self, sid: int, method: str, t0: float) -> None:
        self.sid = sid
        self.method = method
        self.t0 = t0
        self.code = -1
        self.client_done = False
        self.upstream_done = False
        self.response_started = False
        self.answered = False
        self.deadline: float | None = None
        self.deadline_cause = ""
        self.timer: asyncio.TimerHandle | None = None
        # gRPC message framing per direction: bytes left of the current message, and a
        # partial 5-byte prefix (client to upstream: in_*, upstream to client: out_*).
        self.in_left = 0
        self.in_head = b""
        self.out_left = 0
        self.out_head = b""
        # What the inference hooks keep for this stream (infer.py), or None.
        self.infer: Any = None


class TooLarge(Exception):
    pass


def scan_messages(
    left: int, head: bytes, payload: bytes | memoryview, limit: int
) -> tuple[int, bytes, int]:
    """Follows gRPC's length prefixes through one DATA payload: (left, head, offset of a
    message past `limit`, or -1)."""
    i = 0
    n = len(payload)
    while i < n:
        if left:
            take = min(left, n - i)
            i += take
            left -= take
            continue
        start = i
        need = 5 - len(head)
        head += bytes(payload[i : i + need])
        i += need
        if len(head) == 5:
            length = f.u32(head, 1)
            if length > limit:
                return 0, b"", start - (5 - need)
            left = length
            head = b""
    return left, head, -1


class Hooks:
    """What the listener does beyond forwarding (decisions, metrics); the bare tap's are no-ops."""

    def request(
        self, conn: TapConnection, s: Stream, received: Headers, headers: list[Header]
    ) -> tuple[int, str] | None:
        """A new stream: the headers as received, and as they will go up (edit in place);
        (code, details) refuses it."""
        return None

    def response_headers(self, conn: TapConnection, s: Stream, headers: list[Header]) -> bool:
        """The upstream's initial headers, edited in place; False: the hook sends them itself."""
        return True

    def trailers(self, conn: TapConnection, s: Stream, headers: list[Header]) -> None:
        """The upstream's trailers, edited in place."""

    def client_data(
        self, conn: TapConnection, s: Stream, frame: bytes, flags: int, payload: bytes
    ) -> bool:
        """A DATA frame of an inference stream; False: the hook forwards it (or not) itself."""
        return True

    def upstream_data(
        self, conn: TapConnection, s: Stream, frame: bytes, flags: int, payload: bytes
    ) -> bool:
        return True

    def done(self, s: Stream) -> None:
        """The stream is over (s.code: its grpc-status, or CANCELLED)."""

    def after_flush(self, conn: TapConnection) -> None:
        """Runs once the bytes of one read are written: the place for work off the forwarding path."""

    def connection_closed(self, reason: str) -> None:
        """The tap ended a client connection for a limit: `max_connections`,
        `preface_timeout` or `idle`."""


class TapConfig:
    """What every connection of one listener shares."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        *,
        target: str,
        timeout_s: float,
        max_message: int,
        max_concurrent: int,
        max_header_bytes: int,
        unary: frozenset[str],
        strip: frozenset[bytes],
        hooks: Hooks,
        connect_timeout_s: float = 5.0,
        max_connections: int = 1024,
        header_timeout_s: float = 20.0,
        idle_timeout_s: float = 75.0,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.target = target
        self.timeout_s = timeout_s
        self.max_message = max_message
        self.max_concurrent = max_concurrent
        self.max_header_bytes = max_header_bytes
        self.unary = unary
        self.strip = strip
        self.hooks = hooks
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.active = 0
        # Client connections admitted (each may hold an upstream one), and those being refused.
        self.connections = 0
        self.refusing = 0


def tap_config(
    upstream_url: str,
    ca_file: str | None,
    hooks: Hooks,
    *,
    timeout_s: float,
    max_message: int,
    max_concurrent: int,
    max_header_bytes: int,
    unary: frozenset[str],
    strip: frozenset[bytes],
    connect_timeout_s: float = 5.0,
    max_connections: int = 1024,
    header_timeout_s: float = 20.0,
    idle_timeout_s: float = 75.0,
) -> TapConfig:
    parts = urlsplit(upstream_url)
    https = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if https else 80)
    tls = None
    if https:
        tls = ssl.create_default_context(cafile=ca_file)
        tls.set_alpn_protocols(["h2"])
    return TapConfig(
        host,
        port,
        tls,
        target=f"{host}:{port}",
        timeout_s=timeout_s,
        max_message=max_message,
        max_concurrent=max_concurrent,
        max_header_bytes=max_header_bytes,
        unary=unary,
        strip=strip,
        hooks=hooks,
        connect_timeout_s=connect_timeout_s,
        max_connections=max_connections,
        header_timeout_s=header_timeout_s,
        idle_timeout_s=idle_timeout_s,
    )


class _Upstream(asyncio.Protocol):
    def __init__(self, conn: TapConnection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.from_upstream(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause(_UP_FULL)

    def resume_writing(self) -> None:
        self.conn.resume(_UP_FULL)


class TapConnection(asyncio.Protocol):
    """One client connection and its upstream connection."""

    def __init__(self, config: TapConfig, conns: set[TapConnection]) -> None:
        self.config = config
        self.hooks = config.hooks
        self._conns = conns
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self._gone: dict[int, None] = {}
        self._early: list[bytes] | None = []
        self._early_len = 0
        self._alone: str | None = None
        self._closing = False
        self.draining = False
        self._preface = False
        # Until the client preface and its SETTINGS are here, no upstream connection.
        self._waiting = True
        self._admitted = False
        self._refusing = False
        self._paused = 0
        self._made_at = 0.0
        # The sweep's idle mark: the last stream id seen with no stream open (-1: none yet).
        self._idle_mark = -1
        self._idle_at = 0.0
        self._last_sid = 0
        # Incoming bytes not yet a whole frame, per direction.
        self._cbuf = b""
        self._ubuf = b""
        # A header block in CONTINUATIONs: (stream id, flags, parts, length), per direction.
        self._cblock: tuple[int, int, list[bytes], int] | None = None
        self._ublock: tuple[int, int, list[bytes], int] | None = None
        limit = config.max_header_bytes
        self._cdec = Decoder(MAX_TABLE, limit)
        self._udec = Decoder(MAX_TABLE, 1 << 30)
        self._cenc = Encoder()  # toward the client
        self._uenc = Encoder()  # toward the upstream
        # Bytes to write at the end of the read being handled, per direction.
        self.to_client: list[bytes] = []
        self.to_upstream: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        # Window the tap owes the upstream's view of the client, by stream id (0: connection).
        self.debt: dict[int, int] = {}

    # Connection life --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses; they behave as one.)
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(_HIGH_WATER)
        c = self.config
        self._made_at = self.loop.time()
        if c.connections >= c.max_connections:
            self._waiting = False
            c.hooks.connection_closed("max_connections")
            if c.refusing >= _MAX_REFUSING:
                transport.abort()
                return
            # Answered as an unreachable upstream's are (UNAVAILABLE, then GOAWAY), so the
            # client's call fails naming the key, and may retry; no upstream connection.
            c.refusing += 1
            self._refusing = True
            self._conns.add(self)
            self._go_alone(
                f"sidecar: more than {c.max_connections} gRPC connections "
                "(proxy.grpc_max_connections)",
                warn=False,
            )
            return
        c.connections += 1
        self._admitted = True
        self._conns.add(self)

    def pause(self, why: int) -> None:
        """Stop reading the client for `why` (a bit); reading resumes once no bit is left."""
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= why

    def resume(self, why: int) -> None:
        if not self._paused & why:
            return
        self._paused &= ~why
        t = self.transport
        if not self._paused and t is not None and not t.is_closing():
            t.resume_reading()

    def _gate(self) -> None:
        """Opens the upstream connection once the client preface and its SETTINGS are here
        (a client that sends nothing, or not HTTP/2, never costs an upstream connection)."""
        early = self._early
        assert early is not None
        if len(early) > 1:
            early[:] = [b"".join(early)]
        buf = early[0]
        n = min(len(buf), 24)
        if buf[:n] != f.PREFACE[:n]:
            self._connection_error(f.PROTOCOL_ERROR, "not an HTTP/2 client preface")
            return
        if len(buf) < 33:
            return
        hi, lo, ftype, flags, _ = HEAD.unpack_from(buf, 24)
        if ftype != f.SETTINGS or flags & f.ACK:
            self._connection_error(f.PROTOCOL_ERROR, "client preface without SETTINGS")
            return
        if len(buf) < 33 + ((hi << 8) | lo):
            return
        self._waiting = False
        self._task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        c = self.config
        try:
            transport, _ = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Upstream(self),
                    c.host,
                    c.port,
                    ssl=c.tls,
                    server_hostname=c.host if c.tls else None,
                ),
                c.connect_timeout_s,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._go_alone(
                f"sidecar: upstream {c.target} unreachable ({exc or type(exc).__name__})"
            )
            return
        if c.tls is not None:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is None or sslobj.selected_alpn_protocol() != "h2":
                transport.close()
                self._go_alone(f"sidecar: upstream {c.target} unreachable (TLS without ALPN h2)")
                return
        if self.transport is None or self.transport.is_closing():
            transport.close()
            return
        transport.set_write_buffer_limits(_HIGH_WATER)
        self.up = transport
        early, self._early = self._early, None
        self.resume(_EARLY)
        if early:
            self.data_received(b"".join(early))

    def connection_lost(self, exc: Exception | None) -> None:
        self._conns.discard(self)
        if self._admitted:
            self._admitted = False
            self.config.connections -= 1
        if self._refusing:
            self._refusing = False
            self.config.refusing -= 1
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for s in list(self.streams.values()):
            if s.code < 0:
                s.code = CANCELLED
            self._finish(s)
        if self.up is not None:
            self.up.close()

    def upstream_lost(self, exc: Exception | None) -> None:
        """The upstream went away: open streams are answered UNAVAILABLE, then GOAWAY."""
        if self._closing or self.transport is None:
            return
        self._flush()
        why = f"sidecar: upstream {self.config.target} closed the connection"
        for s in list(self.streams.values()):
            self.answer(s, UNAVAILABLE, why)
        self.to_client.append(f.goaway(self._last_sid, f.NO_ERROR))
        self._flush()
        self._closing = True
        self.transport.close()

    def close(self) -> None:
        """Drain: GOAWAY to the client (no new streams); the connection closes once the
        streams it has are over (the listener's stop closes what is left after its grace)."""
        t = self.transport
        if t is None or t.is_closing() or self.draining:
            return
        self.draining = True
        t.write(f.goaway(self._last_sid, f.NO_ERROR))
        if not self.streams:
            t.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        # The client reads slower than its answers come: stop reading the upstream, and the
        # client too (the tap's own answers to its frames must not queue without bound).
        if self.up is not None:
            self.up.pause_reading()
        self.pause(_OWN_FULL)

    def resume_writing(self) -> None:
        if self.up is not None and not self.up.is_closing():
            self.up.resume_reading()
        self.resume(_OWN_FULL)

    # The sweep's checks ---------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Called by the listener's sweep every quarter of the shorter timeout: the client
        preface deadline, and the idle time of a connection with no stream open."""
        if self._closing or self.draining or self._alone is not None:
            return
        c = self.config
        if self._waiting:
            if now - self._made_at >= c.header_timeout_s:
                c.hooks.connection_closed("preface_timeout")
                self._connection_error(
                    f.PROTOCOL_ERROR,
                    f"client preface not received within {c.header_timeout_s:g} s "
                    "(proxy.header_timeout_s)",
                )
            return
        if self.streams:
            self._idle_mark = -1
        elif self._idle_mark != self._last_sid:
            # No stream has opened since the mark (stream ids only grow): idle since then.
            self._idle_mark, self._idle_at = self._last_sid, now
        elif now - self._idle_at >= c.idle_timeout_s:
            c.hooks.connection_closed("idle")
            self._idle_close()

    def _idle_close(self) -> None:
        """GOAWAY(NO_ERROR), as grpc-core's max_connection_idle: the client opens a new
        connection for its next call. Streams it sent before reading the GOAWAY are refused
        (REFUSED_STREAM, which clients retry); the connection closes a moment later."""
        t = self.transport
        if t is None or t.is_closing():
            return
        self.draining = True
        t.write(f.goaway(self._last_sid, f.NO_ERROR, b"idle (proxy.idle_timeout_s)"))
        self.loop.call_later(LINGER_S, self._close_drained)

    def _flush(self) -> None:
        if self.to_upstream:
            if self.up is not None:
                self.up.write(b"".join(self.to_upstream))
            self.to_upstream.clear()
        if self.to_client:
            if self.transport is not None:
                self.transport.write(b"".join(self.to_client))
            self.to_client.clear()

    def _connection_error(self, code: int, why: str) -> None:
        """A connection error (RFC 9113 §5.4.1): GOAWAY both ways, then close."""
        log.info("gRPC connection closed: %s", why)
        self.to_client.append(f.goaway(self._last_sid, code, why.encode()[:200]))
        if self.up is not None:
            self.to_upstream.append(f.goaway(0, code))
        for s in list(self.streams.values()):
            s.code = CANCELLED if s.code < 0 else s.code
            self._finish(s)
        self._flush()
        self._closing = True
        if self.up is not None:
            self.up.close()
        t = self.transport
        if t is not None:
            # Half-close and read on (discarding) a moment: closing with unread bytes would
            # send a TCP reset, and the peer could lose the GOAWAY that says why.
            if t.can_write_eof():
                t.write_eof()
            self.loop.call_later(LINGER_S, t.close)

    # Client to upstream ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._early is not None:
            # The upstream connection is not up yet.
            self._early.append(data)
            self._early_len += len(data)
            if self._early_len >= _EARLY_LIMIT:
                self.pause(_EARLY)
            if self._waiting:
                self._gate()
            return
        buf = self._cbuf + data if self._cbuf else data
        i = 0
        if not self._preface:
            if len(buf) < 24:
                self._cbuf = buf
                return
            if buf[:24] != f.PREFACE:
                self._connection_error(f.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            self._preface = True
            i = 24
            if self._alone is not None:
                self.to_client.append(f.settings([]))
            else:
                self.to_upstream.append(f.PREFACE)
        try:
            if self._alone is not None:
                i = self._alone_frames(buf, i)
            else:
                i = self._client_frames(buf, i)
        except _ConnectionError as err:
            self._connection_error(err.code, str(err))
            return
        except Exception:
            # A bug here must not leave the connection half-handled: it ends cleanly.
            log.exception("gRPC: error handling client frames")
            self._connection_error(f.INTERNAL_ERROR, "internal error")
            return
        self._cbuf = buf[i:]
        self._flush()
        self._after_flush()

    def _after_flush(self) -> None:
        try:
            self.hooks.after_flush(self)
        except Exception:
            # Work off the forwarding path (decisions): the calls were answered already.
            log.exception("gRPC: error after forwarding")

    def _client_frames(self, buf: bytes, i: int) -> int:
        n = len(buf)
        run = i
        out = self.to_upstream
        streams = self.streams
        gone = self._gone
        while n - i >= 9:
            hi, lo, ftype, flags, sid = HEAD.unpack_from(buf, i)
            length = (hi << 8) | lo
            if length > MAX_FRAME:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, f"client frame of {length} octets")
            end = i + 9 + length
            if end > n:
                break
            sid &= 0x7FFFFFFF
            if self._cblock is not None and ftype != f.CONTINUATION:
                raise _ConnectionError(f.PROTOCOL_ERROR, "header block interrupted")
            if ftype == f.DATA:
                s = streams.get(sid)
                if s is not None:
                    payload = buf[i + 9 : end]
                    body = strip_padding(flags, payload)
                    if body is None:
                        raise _ConnectionError(f.PROTOCOL_ERROR, "bad padding")
                    s.in_left, s.in_head, bad = scan_messages(
                        s.in_left, s.in_head, body, self.config.max_message
                    )
                    if flags & f.END_STREAM:
                        s.client_done = True
                    if bad >= 0:
                        if run < i:
                            out.append(buf[run:i])
                        run = end
                        self._too_large(s, "request", length)
                    elif s.infer is not None and not self.hooks.client_data(
                        self, s, buf[i:end], flags, body
                    ):
                        if run < i:
                            out.append(buf[run:i])
                        run = end
                    elif s.client_done and s.upstream_done:
                        self._finish(s)
                elif sid in gone:
                    if run < i:
                        out.append(buf[run:i])
                    run = end
                    if length:
                        self.to_client.append(f.window_update(0, length))
            elif ftype == f.HEADERS or ftype == f.CONTINUATION:
                if run < i:
                    out.append(buf[run:i])
                run = end
                self._client_block(ftype, flags, sid, buf[i + 9 : end])
            elif ftype == f.RST_STREAM:
                s = streams.get(sid)
                if s is not None:
                    s.code = CANCELLED
                    self._finish(s)
                elif sid in gone:
                    if run < i:
                        out.append(buf[run:i])
                    run = end
            elif ftype == f.PING:
                if run < i:
                    out.append(buf[run:i])
                run = end
                _ping(flags, sid, buf[i + 9 : end], self.to_client)
            elif ftype == f.SETTINGS and not flags & f.ACK:
                if run < i:
                    out.append(buf[run:i])
                run = end
                out.append(_capped_settings(buf[i + 9 : end]))
            elif sid and sid in gone and ftype != f.PRIORITY:
                # WINDOW_UPDATE for a stream the upstream never saw (or was told is over).
                if run < i:
                    out.append(buf[run:i])
                run = end
            elif ftype == f.WINDOW_UPDATE and self.debt and length == 4:
                if run < i:
                    out.append(buf[run:i])
                run = end
                increment = self._pay(sid, f.u32(buf, i + 9) & 0x7FFFFFFF)
                if increment:
                    out.append(f.window_update(sid, increment))
            i = end
        if run < i:
            out.append(buf if run == 0 and i == n else buf[run:i])
        return i

    def _client_block(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == f.HEADERS:
            if self._cblock is not None:
                raise _ConnectionError(f.PROTOCOL_ERROR, "HEADERS inside a header block")
            payload = _header_payload(flags, payload)
            if flags & f.END_HEADERS:
                self._client_headers(sid, flags, payload)
                return
            self._cblock = (sid, flags, [payload], len(payload))
            return
        block = self._cblock
        if block is None or block[0] != sid:
            raise _ConnectionError(f.PROTOCOL_ERROR, "CONTINUATION out of place")
        parts = block[2]
        parts.append(payload)
        size = block[3] + len(payload)
        if size > self.config.max_header_bytes:
            raise _ConnectionError(
                f.ENHANCE_YOUR_CALM, f"header block past {self.config.max_header_bytes} octets"
            )
        self._cblock = (sid, block[1], parts, size)
        if flags & f.END_HEADERS:
            self._cblock = None
            self._client_headers(sid, block[1], b"".join(parts))

    def _decode(self, dec: Decoder, block: bytes) -> Headers:
        try:
            return dec.decode(block)
        except CompressionError as exc:
            raise _ConnectionError(f.COMPRESSION_ERROR, f"HPACK: {exc}") from None

    def _client_headers(self, sid: int, flags: int, block: bytes) -> None:
        if len(block) > self.config.max_header_bytes:
            raise _ConnectionError(
                f.ENHANCE_YOUR_CALM, f"header block past {self.config.max_header_bytes} octets"
            )
        end_stream = bool(flags & f.END_STREAM)
        s = self.streams.get(sid)
        too_large = False
        try:
            headers = self._decode(self._cdec, block)
        except HeaderListTooLarge:
            headers = ()
            too_large = True
        if s is not None or sid in self._gone:
            # Trailers from the client (gRPC clients send none; passed on all the same).
            if s is not None:
                s.client_done = s.client_done or end_stream
                self.to_upstream.append(f.header_block(sid, self._uenc.encode(headers), end_stream))
            return
        if sid <= self._last_sid or not sid & 1:
            raise _ConnectionError(f.PROTOCOL_ERROR, f"stream id {sid} not new")
        if self.draining:
            # Sent before the client read the GOAWAY: refused, so it may retry elsewhere.
            self.to_client.append(f.rst_stream(sid, f.REFUSED_STREAM))
            self._remember_gone(sid)
            return
        self._last_sid = sid
        now = perf_counter()
        method = ""
        timeout: float | None = None
        edited: list[Header] = []
        strip = self.config.strip
        for h in headers:
            name = h[0]
            if name == b":path":
                method = h[1].decode("latin-1")
            elif name == b"grpc-timeout":
                timeout = parse_timeout(h[1])
                continue
            elif name in strip:
                continue
            edited.append(h)
        s = Stream(sid, method, now)
        s.client_done = end_stream
        c = self.config
        if too_large:
            self._refuse(
                s,
                RESOURCE_EXHAUSTED,
                f"sidecar: request metadata past {c.max_header_bytes} octets (proxy.max_header_bytes)",
            )
            return
        if c.active >= c.max_concurrent:
            self._refuse(
                s,
                RESOURCE_EXHAUSTED,
                f"sidecar: more than {c.max_concurrent} calls at once (proxy.grpc_max_concurrent_rpcs)",
            )
            return
        refused = self.hooks.request(self, s, headers, edited)
        if refused is not None:
            self._refuse(s, *refused)
            return
        if method in c.unary:
            if timeout is None or timeout > c.timeout_s:
                timeout = c.timeout_s
                s.deadline_cause = f"proxy.timeout_s ({c.timeout_s:g} s)"
            else:
                s.deadline_cause = "the call's deadline"
        elif timeout is not None:
            s.deadline_cause = "the call's deadline"
        if timeout is not None:
            s.deadline = now + timeout
            edited.append((b"grpc-timeout", format_timeout(timeout)))
            s.timer = self.loop.call_at(self.loop.time() + timeout, self._expire, s)
        self.streams[sid] = s
        c.active += 1
        block = self._uenc.encode(edited, self._cdec.never)
        self.to_upstream.append(f.header_block(sid, block, end_stream))

    # Upstream to client ------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        if self._closing:
            return
        buf = self._ubuf + data if self._ubuf else data
        try:
            i = self._upstream_frames(buf)
        except _ConnectionError as err:
            self._connection_error(err.code, "upstream: " + str(err))
            return
        except Exception:
            log.exception("gRPC: error handling upstream frames")
            self._connection_error(f.INTERNAL_ERROR, "internal error")
            return
        self._ubuf = buf[i:]
        self._flush()
        self._after_flush()

    def _upstream_frames(self, buf: bytes) -> int:
        n = len(buf)
        i = run = 0
        out = self.to_client
        streams = self.streams
        gone = self._gone
        while n - i >= 9:
            hi, lo, ftype, flags, sid = HEAD.unpack_from(buf, i)
            length = (hi << 8) | lo
            if length > MAX_FRAME:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, f"frame of {length} octets")
            end = i + 9 + length
            if end > n:
                break
            sid &= 0x7FFFFFFF
            if self._ublock is not None and ftype != f.CONTINUATION:
                raise _ConnectionError(f.PROTOCOL_ERROR, "header block interrupted")
            if ftype == f.DATA:
                s = streams.get(sid)
                if s is not None:
                    payload = buf[i + 9 : end]
                    body = strip_padding(flags, payload)
                    if body is None:
                        raise _ConnectionError(f.PROTOCOL_ERROR, "bad padding")
                    s.out_left, s.out_head, bad = scan_messages(
                        s.out_left, s.out_head, body, self.config.max_message
                    )
                    if bad >= 0:
                        if run < i:
                            out.append(buf[run:i])
                        run = end
                        self._too_large(s, "response", length)
                    elif s.infer is not None and not self.hooks.upstream_data(
                        self, s, buf[i:end], flags, body
                    ):
                        if run < i:
                            out.append(buf[run:i])
                        run = end
                    if flags & f.END_STREAM and not s.answered:
                        s.upstream_done = True
                        if s.code < 0:
                            s.code = OK
                        if s.client_done:
                            self._finish(s)
                elif sid in gone:
                    if run < i:
                        out.append(buf[run:i])
                    run = end
                    if length:
                        self.to_upstream.append(f.window_update(0, length))
            elif ftype == f.HEADERS or ftype == f.CONTINUATION:
                if run < i:
                    out.append(buf[run:i])
                run = end
                self._upstream_block(ftype, flags, sid, buf[i + 9 : end])
            elif ftype == f.RST_STREAM:
                s = streams.get(sid)
                if s is not None:
                    s.code = CANCELLED
                    self._finish(s)
                elif sid in gone:
                    if run < i:
                        out.append(buf[run:i])
                    run = end
            elif ftype == f.PING:
                if run < i:
                    out.append(buf[run:i])
                run = end
                _ping(flags, sid, buf[i + 9 : end], self.to_upstream)
            elif ftype == f.SETTINGS and not flags & f.ACK:
                if run < i:
                    out.append(buf[run:i])
                run = end
                out.append(_capped_settings(buf[i + 9 : end]))
            elif ftype == f.PUSH_PROMISE:
                raise _ConnectionError(f.PROTOCOL_ERROR, "PUSH_PROMISE (gRPC clients refuse push)")
            elif sid and sid in gone and ftype != f.PRIORITY:
                if run < i:
                    out.append(buf[run:i])
                run = end
            i = end
        if run < i:
            out.append(buf if run == 0 and i == n else buf[run:i])
        return i

    def _upstream_block(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == f.HEADERS:
            if self._ublock is not None:
                raise _ConnectionError(f.PROTOCOL_ERROR, "HEADERS inside a header block")
            payload = _header_payload(flags, payload)
            if flags & f.END_HEADERS:
                self._upstream_headers(sid, flags, payload)
                return
            self._ublock = (sid, flags, [payload], len(payload))
            return
        block = self._ublock
        if block is None or block[0] != sid:
            raise _ConnectionError(f.PROTOCOL_ERROR, "CONTINUATION out of place")
        parts = block[2]
        parts.append(payload)
        size = block[3] + len(payload)
        if size > MAX_FRAME:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, f"header block past {MAX_FRAME} octets")
        self._ublock = (sid, block[1], parts, size)
        if flags & f.END_HEADERS:
            self._ublock = None
            self._upstream_headers(sid, block[1], b"".join(parts))

    def _upstream_headers(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decode(self._udec, block)
        s = self.streams.get(sid)
        if s is None or s.answered:
            return  # a stream the tap ended: decoded only to keep the table in step
        end_stream = bool(flags & f.END_STREAM)
        edited = list(headers)
        if end_stream:
            self._read_status(s, edited)
            self.hooks.trailers(self, s, edited)
        elif not s.response_started and not self.hooks.response_headers(self, s, edited):
            return
        s.response_started = True
        if s.answered:
            return
        self.to_client.append(
            f.header_block(sid, self._cenc.encode(edited, self._udec.never), end_stream)
        )
        if end_stream:
            s.upstream_done = True
            if s.client_done:
                self._finish(s)

    def _read_status(self, s: Stream, headers: list[Header]) -> None:
        code = -1
        message_at = -1
        for k, (name, value) in enumerate(headers):
            if name == b"grpc-status":
                code = int(value) if value.isdigit() else 2
            elif name == b"grpc-message":
                message_at = k
        s.code = code if code >= 0 else 2
        if (
            code == DEADLINE_EXCEEDED
            and s.deadline is not None
            and perf_counter() - s.t0 >= (s.deadline - s.t0) * 0.98
        ):
            # The deadline the tap forwarded ran out (not a status the model server chose).
            msg = _message(
                f"sidecar: upstream {self.config.target} did not answer within {s.deadline_cause}"
            )
            if message_at >= 0:
                headers[message_at] = (b"grpc-message", msg)
            else:
                headers.append((b"grpc-message", msg))

    def send_headers(self, s: Stream, headers: list[Header], end_stream: bool) -> None:
        """A header block of the tap's own toward the client."""
        self.to_client.append(f.header_block(s.sid, self._cenc.encode(headers), end_stream))
        s.response_started = True

    def owe(self, sid: int, n: int) -> None:
        """The client got `n` more DATA bytes than the upstream sent (a message the tap
        rewrote longer): that much of the client's next WINDOW_UPDATEs is not passed up,
        so the upstream's view of the client's windows stays exact."""
        self.debt[0] = self.debt.get(0, 0) + n
        self.debt[sid] = self.debt.get(sid, 0) + n

    def _pay(self, sid: int, increment: int) -> int:
        """What is left of a client WINDOW_UPDATE once the debt on its stream is paid."""
        owed = self.debt.get(sid, 0)
        if not owed:
            return increment
        paid = min(owed, increment)
        if owed == paid:
            del self.debt[sid]
        else:
            self.debt[sid] = owed - paid
        return increment - paid

    # Streams the tap ends ----------------------------------------------------------

    def _expire(self, s: Stream) -> None:
        s.timer = None
        if s.sid not in self.streams or self._closing:
            return
        self.answer(
            s,
            DEADLINE_EXCEEDED,
            f"sidecar: upstream {self.config.target} did not answer within {s.deadline_cause}",
        )
        self._flush()

    def _too_large(self, s: Stream, what: str, length: int) -> None:
        # The frame is dropped: its bytes are given back to the sender's connection window.
        if length:
            if what == "request":
                self.to_client.append(f.window_update(0, length))
            else:
                self.to_upstream.append(f.window_update(0, length))
        self.answer(
            s,
            RESOURCE_EXHAUSTED,
            f"sidecar: {what} message larger than {self.config.max_message} octets "
            "(proxy.grpc_max_message_bytes)",
        )

    def answer(
        self, s: Stream, code: int, details: str, metadata: list[Header] | None = None
    ) -> None:
        """End a forwarded stream with the tap's own status: the client gets trailers (or
        trailers-only), the upstream RST_STREAM CANCEL."""
        block = (
            []
            if s.response_started
            else [(b":status", b"200"), (b"content-type", b"application/grpc")]
        )
        block += metadata or []
        block += [(b"grpc-status", str(code).encode()), (b"grpc-message", _message(details))]
        self.to_client.append(f.header_block(s.sid, self._cenc.encode(block), True))
        if not s.client_done:
            self.to_client.append(f.rst_stream(s.sid, f.NO_ERROR))
        if not s.upstream_done and self.up is not None:
            self.to_upstream.append(f.rst_stream(s.sid, f.CANCEL))
        s.answered = True
        s.code = code
        self._finish(s)

    def _refuse(self, s: Stream, code: int, details: str) -> None:
        """Answer a stream that was never forwarded."""
        s.upstream_done = True
        block = [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(code).encode()),
            (b"grpc-message", _message(details)),
        ]
        self.to_client.append(f.header_block(s.sid, self._cenc.encode(block), True))
        if not s.client_done:
            self.to_client.append(f.rst_stream(s.sid, f.NO_ERROR))
        s.code = code
        s.answered = True
        self._remember_gone(s.sid)
        self.hooks.done(s)

    def _remember_gone(self, sid: int) -> None:
        gone = self._gone
        gone[sid] = None
        if len(gone) > _GONE:
            del gone[next(iter(gone))]

    def _finish(self, s: Stream) -> None:
        if self.streams.pop(s.sid, None) is None:
            return
        self.config.active -= 1
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.answered:
            self._remember_gone(s.sid)
        self.debt.pop(s.sid, None)
        self.hooks.done(s)
        if self.draining and not self.streams:
            # After this read's bytes (the stream's last frames) are written.
            self.loop.call_soon(self._close_drained)

    def _close_drained(self) -> None:
        if not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    # When the upstream cannot be reached ---------------------------------------------

    def _go_alone(self, why: str, *, warn: bool = True) -> None:
        """Answer every stream UNAVAILABLE for a while, as an HTTP/2 server, then GOAWAY."""
        if self.transport is None or self.transport.is_closing():
            return
        if warn:
            log.warning("gRPC: %s", why)
        self._alone = why
        early, self._early = self._early or [], None
        self.resume(_EARLY)
        if self._preface:
            self.to_client.append(f.settings([]))
        self.loop.call_later(ALONE_S, self.close)
        if early:
            self.data_received(b"".join(early))

    def _alone_frames(self, buf: bytes, i: int) -> int:
        n = len(buf)
        assert self._alone is not None
        while n - i >= 9:
            hi, lo, ftype, flags, sid = HEAD.unpack_from(buf, i)
            length = (hi << 8) | lo
            if length > MAX_FRAME:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, f"client frame of {length} octets")
            end = i + 9 + length
            if end > n:
                break
            sid &= 0x7FFFFFFF
            payload = buf[i + 9 : end]
            if self._cblock is not None and ftype != f.CONTINUATION:
                raise _ConnectionError(f.PROTOCOL_ERROR, "header block interrupted")
            if ftype == f.SETTINGS and not flags & f.ACK:
                self.to_client.append(f.frame(f.SETTINGS, f.ACK, 0))
            elif ftype == f.PING and not flags & f.ACK:
                self.to_client.append(f.frame(f.PING, f.ACK, 0, payload))
            elif ftype == f.DATA and length:
                self.to_client.append(f.window_update(0, length))
            elif ftype == f.HEADERS or ftype == f.CONTINUATION:
                self._alone_block(ftype, flags, sid, payload)
            i = end
        return i

    def _alone_block(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == f.HEADERS:
            payload = _header_payload(flags, payload)
            if not flags & f.END_HEADERS:
                self._cblock = (sid, flags, [payload], len(payload))
                return
        else:
            block = self._cblock
            if block is None or block[0] != sid:
                raise _ConnectionError(f.PROTOCOL_ERROR, "CONTINUATION out of place")
            block[2].append(payload)
            if block[3] + len(payload) > self.config.max_header_bytes:
                raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
            self._cblock = (sid, block[1], block[2], block[3] + len(payload))
            if not flags & f.END_HEADERS:
                return
            self._cblock = None
            flags = block[1]
            payload = b"".join(block[2])
        try:
            headers = self._decode(self._cdec, payload)
        except HeaderListTooLarge:
            headers = ()
        if sid <= self._last_sid:
            return
        self._last_sid = sid
        method = next((v.decode("latin-1") for k, v in headers if k == b":path"), "")
        s = Stream(sid, method, perf_counter())
        s.client_done = bool(flags & f.END_STREAM)
        assert self._alone is not None
        self._refuse(s, UNAVAILABLE, self._alone)


class _ConnectionError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def _header_payload(flags: int, payload: bytes) -> bytes:
    body = strip_padding(flags, payload)
    if body is None:
        raise _ConnectionError(f.PROTOCOL_ERROR, "bad padding")
    if flags & f.PRIORITY_FLAG:
        body = body[5:]
    return body


def _ping(flags: int, sid: int, payload: bytes, back: list[bytes]) -> None:
    """A peer's PING, answered on its own hop and never forwarded (RFC 9113 6.7: a PING is the
    connection's, as every HTTP/2 proxy treats it). Passed through, each call's flow-control
    probes (grpc-go and grpc-core ping as a call's DATA arrives) cost the tap two more reads
    and writes, and a client's keepalive would keep an idle upstream connection busy. The
    tap sends no PING of its own, so an ACK is dropped."""
    if sid:
        raise _ConnectionError(f.PROTOCOL_ERROR, "PING on a stream")
    if len(payload) != 8:
        raise _ConnectionError(f.FRAME_SIZE_ERROR, f"PING of {len(payload)} octets")
    if not flags & f.ACK:
        back.append(f.frame(f.PING, f.ACK, 0, payload))


def _capped_settings(payload: bytes) -> bytes:
    """A SETTINGS frame as forwarded: the table and frame sizes capped at what the tap keeps."""
    if len(payload) % 6:
        raise _ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
    params = []
    for key, value in f.read_settings(payload):
        if key == f.HEADER_TABLE_SIZE:
            value = min(value, MAX_TABLE)
        elif key == f.MAX_FRAME_SIZE:
            value = min(value, MAX_FRAME)
        params.append((key, value))
    return f.settings(params)


def _message(details: str) -> bytes:
    """grpc-message: percent-encoded UTF-8 (gRPC's HTTP/2 mapping)."""
    return quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def listen(config: TapConfig, conns: set[TapConnection]) -> Callable[[], TapConnection]:
    return lambda: TapConnection(config, conns)


class Sweep:
    """The listener's one timer for every connection's deadlines (the client preface,
    idle time): every quarter of the shorter timeout, so each fires at most 25% late, and
    nothing is armed or cancelled per call."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, config: TapConfig, conns: set[TapConnection]
    ) -> None:
        self._loop = loop
        self._conns = conns
        self._period = min(config.header_timeout_s, config.idle_timeout_s) / 4
        self._handle: asyncio.TimerHandle | None = loop.call_later(self._period, self._run)

    def _run(self) -> None:
        now = self._loop.time()
        for conn in list(self._conns):
            try:
                conn.sweep(now)
            except Exception:
                log.exception("gRPC: error checking a connection's deadlines")
        self._handle = self._loop.call_later(self._period, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
