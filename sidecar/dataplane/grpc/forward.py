"""Forwarding one RPC to the gRPC upstream as raw bytes: metadata, deadline, status, cancellation.

The sidecar never deserialises what it only forwards: messages stay bytes
(no serializer on either side). What goes up: the client's metadata without
the hop-by-hop and transport keys (`grpc-*`, `te`, `content-type`,
`user-agent`, ...) and without the group-attribute key; the deadline the client
has left (`time_remaining`), and for unary calls at most `proxy.timeout_s`.
What comes back: the upstream's initial and trailing metadata (same filter),
its messages, its status code and details. A client that cancels cancels the
upstream call; an upstream that cancels is answered CANCELLED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc.aio import AioRpcError

# Metadata a proxy never copies from one hop to the next: gRPC's own keys, HTTP/2's
# connection headers and what the channel sets itself.
_HOP = frozenset(
    {
        "te",
        "content-type",
        "user-agent",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)
# time_remaining() without a client deadline is None, or (some grpcio builds) centuries.
_NO_DEADLINE_S = 1e8

Metadata = Sequence[tuple[str, str | bytes]]
# grpcio ships no type information: its objects are Any to mypy.
Context = Any
perf_counter = time.perf_counter


def end_to_end(metadata: Any, strip: frozenset[str] = frozenset()) -> list[tuple[str, Any]]:
    """The metadata a proxy passes on (keys are lower-case on the wire)."""
    if not metadata:
        return []
    return [
        (k, v)
        for k, v in metadata
        if k not in _HOP and k not in strip and not k.startswith(("grpc-", ":"))
    ]


def raw_headers(metadata: Any) -> list[tuple[bytes, bytes]]:
    """Request metadata as the Decider reads headers: lower-case names, bytes values."""
    return [
        (k.encode("latin-1"), v if isinstance(v, bytes) else v.encode("latin-1"))
        for k, v in metadata or ()
    ]


class Forwarder:
    """The upstream channel and the rules for one hop; shared by every handler."""

    def __init__(
        self, channel: grpc.aio.Channel, target: str, timeout_s: float, strip: frozenset[str]
    ) -> None:
        self._channel = channel
        self._target = target
        self._timeout_s = timeout_s
        self.strip = strip
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._streams: dict[str, grpc.aio.StreamStreamMultiCallable] = {}

    def _deadline(self, context: Context, unary: bool) -> float | None:
        left: float | None = context.time_remaining()
        if left is None or left > _NO_DEADLINE_S:
            return self._timeout_s if unary else None
        return min(left, self._timeout_s) if unary else left

    async def unary(
        self, method: str, request: bytes, context: Context
    ) -> tuple[bytes, Metadata, Metadata]:
        """(response, initial metadata, trailing metadata). Raises the upstream's AioRpcError."""
        stub = self._unary.get(method)
        if stub is None:
            stub = self._unary[method] = self._channel.unary_unary(method)
        timeout = self._deadline(context, True)
        t0 = perf_counter()
        call = stub(
            request, metadata=end_to_end(context.invocation_metadata(), self.strip), timeout=timeout
        )
        try:
            response: bytes = await call
        except asyncio.CancelledError:
            # The client went away (or its deadline passed): the model need not finish.
            call.cancel()
            raise
        except AioRpcError as err:
            raise self.explain(err, timeout, perf_counter() - t0) from None
        return response, await call.initial_metadata(), await call.trailing_metadata()

    def explain(self, err: AioRpcError, timeout: float | None, spent: float) -> AioRpcError:
        """The upstream's error, with details naming the cause when the failure was the hop's own."""
        code = err.code()
        details = None
        if code is grpc.StatusCode.UNAVAILABLE and self._unreachable():
            details = f"sidecar: upstream {self._target} unreachable ({err.details()})"
        elif (
            code is grpc.StatusCode.DEADLINE_EXCEEDED
            and timeout is not None
            and spent >= timeout * 0.98
        ):
            # Our deadline ran out (not a status the model server chose to send).
            cause = (
                f"proxy.timeout_s ({self._timeout_s:g} s)"
                if timeout >= self._timeout_s
                else "the call's deadline"
            )
            details = f"sidecar: upstream {self._target} did not answer within {cause}"
        if details is None:
            return err
        return AioRpcError(
            code, err.initial_metadata(), err.trailing_metadata(), details, err.debug_error_string()
        )

    def _unreachable(self) -> bool:
        state = self._channel.get_state(try_to_connect=False)
        return state in (
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.CONNECTING,
        )

    async def fail(
        self,
        context: Context,
        err: AioRpcError,
        headers_sent: bool = False,
    ) -> None:
        """Answer the client with the upstream's error: headers if it sent any, code, details, trailers."""
        initial = end_to_end(err.initial_metadata())
        if initial and not headers_sent:
            await context.send_initial_metadata(initial)
        await context.abort(
            err.code(), err.details() or "", tuple(end_to_end(err.trailing_metadata()))
        )

    async def passthrough_unary(self, method: str, request: bytes, context: Context) -> bytes:
        try:
            response, initial, trailing = await self.unary(method, request, context)
        except AioRpcError as err:
            await self.fail(context, err)
            raise  # abort raised already; this is for the type checker
        initial = end_to_end(initial)
        if initial:
            # Sent by itself this is one more batch through grpcio's completion queue
            # (loadtests/grpc_hops: 0.95x the hop's CPU without it); when there is none,
            # grpcio sends the (empty) headers with the answer, the same on the wire.
            await context.send_initial_metadata(initial)
        context.set_trailing_metadata(end_to_end(trailing))
        return response

    def open_stream(self, method: str, context: Context) -> Any:
        """An upstream call of any shape: on the wire, unary and streaming RPCs differ only
        in how many messages each side sends, so one stream-stream call carries them all."""
        stub = self._streams.get(method)
        if stub is None:
            stub = self._streams[method] = self._channel.stream_stream(method)
        return stub(
            metadata=end_to_end(context.invocation_metadata(), self.strip),
            timeout=self._deadline(context, False),
        )

    async def passthrough_stream(
        self,
        method: str,
        requests: AsyncIterator[bytes],
        context: Context,
    ) -> None:
        call = self.open_stream(method, context)
        pump = asyncio.ensure_future(pump_requests(requests, call))
        t0 = perf_counter()
        sent = False
        try:
            await context.send_initial_metadata(end_to_end(await call.initial_metadata()))
            sent = True
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                await context.write(message)
            await check_status(call)
            context.set_trailing_metadata(end_to_end(await call.trailing_metadata()))
        except AioRpcError as err:
            await self.fail(context, self.explain(err, None, perf_counter() - t0), sent)
        finally:
            pump.cancel()
            call.cancel()


async def check_status(call: Any) -> None:
    """Raise the call's error when it ended with one (read() gave EOF, the status may still fail)."""
    code = await call.code()
    if code is not grpc.StatusCode.OK:
        raise AioRpcError(
            code,
            await call.initial_metadata(),
            await call.trailing_metadata(),
            await call.details(),
        )


async def pump_requests(requests: AsyncIterator[Any], call: Any) -> None:
    """Copy the client's messages up, then half-close; ends quietly when the call is over."""
    try:
        async for message in requests:
            await call.write(message)
        await call.done_writing()
    except (AioRpcError, asyncio.InvalidStateError):
        # The upstream finished (or failed) first: its status is what the client gets.
        pass
