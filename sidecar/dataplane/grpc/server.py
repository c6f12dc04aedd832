"""The gRPC listener (`proxy.grpc_listen`): one generic handler that forwards every method.

It runs on the data plane's event loop (grpcio's asyncio API works on uvloop):
the decisions go to the same pipeline from the same thread as the HTTP path's,
and a second loop would only add a thread competing for the interpreter.
Methods are served as they are named on the wire, without a registered
service: the Open Inference Protocol's unary methods as unary-unary, its
inference methods with decisions, and any other method as a stream-stream
call, which carries unary and streaming RPCs alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import grpc
from grpc.aio import AioRpcError

from sidecar.config import ProxySettings
from sidecar.dataplane.decide import Decider
from sidecar.dataplane.grpc.forward import Forwarder
from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import ServerReadyResponse
from sidecar.dataplane.grpc.infer import MODEL_INFER, MODEL_STREAM_INFER, SERVICE, InferHandlers
from sidecar.metrics import Counter, Histogram, Registry
from sidecar.pipeline.queue import Pipeline

log = logging.getLogger("sidecar.dataplane.grpc")

SERVER_READY = SERVICE + "ServerReady"
# The protocol's unary methods (Triton's included): served unary-unary, a cheaper path.
_UNARY = frozenset(
    SERVICE + m
    for m in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "TraceSetting",
        "LogSettings",
    )
)
# Methods given their own metric label; others count as "other", so a client sending
# random method names cannot grow the metric families.
_MAX_METHOD_LABELS = 64
_MAX_HANDLERS = 256

# grpcio ships no type information: its objects are Any to mypy.
Context = Any


class _Metrics:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._calls: dict[tuple[str, str], Counter] = {}
        self._labels: dict[str, str] = {}
        self.latency: Histogram = registry.histogram(
            "sidecar_grpc_call_seconds", "gRPC calls through the sidecar, from arrival to status"
        )
        self.count(MODEL_INFER, grpc.StatusCode.OK, 0)

    def label(self, method: str) -> str:
        label = self._labels.get(method)
        if label is None:
            label = method if len(self._labels) < _MAX_METHOD_LABELS else "other"
            self._labels[method] = label
        return label

    def count(self, method: str, code: grpc.StatusCode, n: int = 1) -> None:
        key = (self.label(method), code.name)
        c = self._calls.get(key)
        if c is None:
            c = self._calls[key] = self._registry.counter(
                "sidecar_grpc_calls_total",
                "gRPC calls through the sidecar, by method and status code",
                {"method": key[0], "code": key[1]},
            )
        c.inc(n)


def _code(context: Context, failed: BaseException | None) -> grpc.StatusCode:
    if isinstance(failed, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.UNKNOWN if failed is not None else grpc.StatusCode.OK


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Maps each method name to a handler, built on first use and kept."""

    def __init__(self, forwarder: Forwarder, infer: InferHandlers, metrics: _Metrics) -> None:
        self._fwd = forwarder
        self._infer = infer
        self._metrics = metrics
        self._handlers: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._build(method)
            if len(self._handlers) >= _MAX_HANDLERS:
                self._handlers.clear()
            self._handlers[method] = handler
        return handler

    def _build(self, method: str) -> Any:
        if method == MODEL_INFER:
            return grpc.unary_unary_rpc_method_handler(
                self._counted_unary(method, self._infer.model_infer)
            )
        if method in _UNARY:
            return grpc.unary_unary_rpc_method_handler(
                self._counted_unary(method, partial(self._fwd.passthrough_unary, method))
            )
        if method == MODEL_STREAM_INFER:
            return grpc.stream_stream_rpc_method_handler(
                self._counted_stream(method, self._infer.model_stream_infer)
            )
        return grpc.stream_stream_rpc_method_handler(
            self._counted_stream(method, partial(self._fwd.passthrough_stream, method))
        )

    def _counted_unary(
        self, method: str, fn: Callable[[bytes, Context], Awaitable[bytes]]
    ) -> Callable[[bytes, Context], Awaitable[bytes]]:
        metrics = self._metrics

        async def handle(request: bytes, context: Context) -> bytes:
            t0 = time.perf_counter()
            failed: BaseException | None = None
            try:
                return await fn(request, context)
            except BaseException as exc:
                failed = exc
                raise
            finally:
                metrics.count(method, _code(context, failed))
                metrics.latency.observe(time.perf_counter() - t0)

        return handle

    def _counted_stream(
        self, method: str, fn: Callable[[AsyncIterator[bytes], Context], Awaitable[None]]
    ) -> Callable[[AsyncIterator[bytes], Context], Awaitable[None]]:
        metrics = self._metrics

        async def handle(requests: AsyncIterator[bytes], context: Context) -> None:
            t0 = time.perf_counter()
            failed: BaseException | None = None
            try:
                await fn(requests, context)
            except BaseException as exc:
                failed = exc
                raise
            finally:
                metrics.count(method, _code(context, failed))
                metrics.latency.observe(time.perf_counter() - t0)

        return handle


def channel_for(settings: ProxySettings) -> tuple[grpc.aio.Channel, str]:
    """The upstream channel (TLS verified for https://, against proxy.upstream_ca_file if set)."""
    assert settings.grpc_upstream is not None
    parts = urlsplit(settings.grpc_upstream)
    https = parts.scheme == "https"
    target = f"{parts.hostname}:{parts.port or (443 if https else 80)}"
    limit = settings.grpc_max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Calls fail at once while the upstream is down rather than queue behind a reconnect.
        ("grpc.enable_retries", 0),
    ]
    if not https:
        return grpc.aio.insecure_channel(target, options=options), target
    roots = settings.upstream_ca_file.read_bytes() if settings.upstream_ca_file else None
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(target, creds, options=options), target


class GrpcServer:
    """The listener, the upstream channel and the handlers; started and stopped by the Service."""

    def __init__(
        self,
        settings: ProxySettings,
        decider: Decider,
        pipeline: Pipeline,
        registry: Registry,
        body_field: str | None,
    ) -> None:
        self._settings = settings
        self._decider = decider
        self._pipeline = pipeline
        self._registry = registry
        self._body_field = body_field
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.infer: InferHandlers | None = None
        self.port = 0

    async def start(self) -> None:
        """Open the channel and the listener (on the running loop). Fails naming the key."""
        s = self._settings
        assert s.grpc_listen is not None
        self._loop = asyncio.get_running_loop()
        self._channel, target = channel_for(s)
        strip = frozenset(name.decode("latin-1") for name in self._decider.strip)
        forwarder = Forwarder(self._channel, target, s.timeout_s, strip)
        self.infer = infer = InferHandlers(
            forwarder,
            self._decider,
            self._pipeline,
            decision_id_in_parameters=s.grpc_decision_id_in_parameters,
            body_field=self._body_field,
        )
        limit = s.grpc_max_message_bytes
        server = grpc.aio.server(
            handlers=[_Handler(forwarder, infer, _Metrics(self._registry))],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.grpc_max_concurrent_rpcs,
        )
        try:
            self.port = server.add_insecure_port(s.grpc_listen)
        except RuntimeError as exc:
            raise RuntimeError(
                f"proxy.grpc_listen = {s.grpc_listen!r}: cannot listen ({exc})"
            ) from None
        self._server = server
        await server.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._channel is not None:
            await self._channel.close()

    async def _server_ready(self, timeout_s: float) -> bool:
        assert self._channel is not None
        try:
            data = await self._channel.unary_unary(SERVER_READY)(b"", timeout=timeout_s)
        except AioRpcError:
            return False
        return bool(ServerReadyResponse.FromString(data).ready)

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """Readiness from any loop: the upstream answers ServerReady with ready = true."""
        loop = self._loop
        if loop is None or self._channel is None or loop.is_closed():
            return False
        future = asyncio.run_coroutine_threadsafe(self._server_ready(timeout_s), loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s + 1.0)
        except (TimeoutError, RuntimeError):
            return False
