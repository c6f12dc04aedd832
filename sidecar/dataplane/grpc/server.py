"""The gRPC listener (`proxy.grpc_listen`): the frame tap (tap.py) on the data plane's loop.

It runs on the data plane's event loop: the decisions go to the same pipeline
from the same thread as the HTTP path's. Every method is forwarded as it is
named on the wire, unknown ones included; ModelInfer and ModelStreamInfer are
also decided (infer.py). The hooks here count calls by method and status code
(grpc-status from the trailers; CANCELLED for a stream reset either way).

`/readyz` asks the upstream ServerReady through a grpcio channel of its own:
not on the hot path, and it checks what a gRPC client would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from urllib.parse import urlsplit

import grpc
from grpc.aio import AioRpcError

from sidecar.config import ProxySettings
from sidecar.dataplane.decide import Decider
from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import ServerReadyResponse
from sidecar.dataplane.grpc.headerblock import Header, Headers
from sidecar.dataplane.grpc.infer import (
    MODEL_INFER,
    MODEL_STREAM_INFER,
    SERVICE,
    UNARY_METHODS,
    InferHooks,
)
from sidecar.dataplane.grpc.tap import Hooks, Stream, Sweep, TapConnection, tap_config
from sidecar.metrics import Counter, Histogram, Registry
from sidecar.pipeline.queue import Pipeline

log = logging.getLogger("sidecar.dataplane.grpc")

SERVER_READY = SERVICE + "ServerReady"
# Methods given their own metric label; others count as "other", so a client sending
# random method names cannot grow the metric families.
_MAX_METHOD_LABELS = 64
# grpc-status numbers to the names the metrics use (grpcio's table).
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_INFER = frozenset({MODEL_INFER, MODEL_STREAM_INFER})
perf_counter = time.perf_counter


class _Metrics:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._calls: dict[tuple[str, int], Counter] = {}
        self._labels: dict[str, str] = {}
        self.latency: Histogram = registry.histogram(
            "sidecar_grpc_call_seconds", "gRPC calls through the sidecar, from arrival to status"
        )
        self.count(MODEL_INFER, 0, 0)
        self.closed = {
            reason: registry.counter(
                "sidecar_grpc_connections_closed_total",
                "gRPC client connections the sidecar refused or closed for a limit, by reason",
                {"reason": reason},
            )
            for reason in ("max_connections", "preface_timeout", "idle")
        }

    def label(self, method: str) -> str:
        label = self._labels.get(method)
        if label is None:
            label = method if len(self._labels) < _MAX_METHOD_LABELS else "other"
            self._labels[method] = label
        return label

    def count(self, method: str, code: int, n: int = 1) -> None:
        key = (method, code)
        c = self._calls.get(key)
        if c is None:
            if len(self._calls) >= _MAX_METHOD_LABELS * 20:
                self._calls.clear()
            c = self._calls[key] = self._registry.counter(
                "sidecar_grpc_calls_total",
                "gRPC calls through the sidecar, by method and status code",
                {"method": self.label(method), "code": _CODE_NAMES.get(code, "UNKNOWN")},
            )
        c.inc(n)


class ListenerHooks(Hooks):
    """Metrics for every call; the inference RPCs' hooks for those two methods."""

    def __init__(self, metrics: _Metrics, infer: InferHooks) -> None:
        self._metrics = metrics
        self.infer = infer

    def request(
        self, conn: TapConnection, s: Stream, received: Headers, headers: list[Header]
    ) -> tuple[int, str] | None:
        if s.method in _INFER:
            return self.infer.request(s, received)
        return None

    def response_headers(self, conn: TapConnection, s: Stream, headers: list[Header]) -> bool:
        if s.infer is not None:
            return self.infer.response_headers(conn, s, headers)
        return True

    def trailers(self, conn: TapConnection, s: Stream, headers: list[Header]) -> None:
        if s.infer is not None:
            self.infer.trailers(conn, s)

    def client_data(
        self, conn: TapConnection, s: Stream, frame: bytes, flags: int, payload: bytes
    ) -> bool:
        self.infer.client_data(conn, s, frame, payload)
        return False

    def upstream_data(
        self, conn: TapConnection, s: Stream, frame: bytes, flags: int, payload: bytes
    ) -> bool:
        return self.infer.upstream_data(conn, s, frame, payload)

    def done(self, s: Stream) -> None:
        self._metrics.count(s.method, s.code)
        self._metrics.latency.observe(perf_counter() - s.t0)
        if s.infer is not None:
            self.infer.done(s)

    def after_flush(self, conn: TapConnection) -> None:
        if self.infer.work:
            self.infer.after_flush()

    def connection_closed(self, reason: str) -> None:
        self._metrics.closed[reason].inc()


def channel_for(settings: ProxySettings) -> grpc.aio.Channel:
    """The readiness channel (TLS verified for https://, against proxy.upstream_ca_file if set)."""
    assert settings.grpc_upstream is not None
    parts = urlsplit(settings.grpc_upstream)
    https = parts.scheme == "https"
    target = f"{parts.hostname}:{parts.port or (443 if https else 80)}"
    options = [("grpc.enable_retries", 0)]
    if not https:
        return grpc.aio.insecure_channel(target, options=options)
    roots = settings.upstream_ca_file.read_bytes() if settings.upstream_ca_file else None
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(target, creds, options=options)


class GrpcServer:
    """The listener and its hooks; started and stopped by the Service."""

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
        self._server: asyncio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[TapConnection] = set()
        self._sweep: Sweep | None = None
        self.infer: InferHooks | None = None
        self.port = 0

    async def start(self, sock: socket.socket | None = None) -> None:
        """Open the listener (on the running loop), on `sock` when given (a worker's, bound
        with SO_REUSEPORT by the service's process). Fails naming the key."""
        s = self._settings
        assert s.grpc_listen is not None and s.grpc_upstream is not None
        self._loop = loop = asyncio.get_running_loop()
        self.infer = infer = InferHooks(
            self._decider,
            self._pipeline,
            decision_id_in_parameters=s.grpc_decision_id_in_parameters,
            body_field=self._body_field,
        )
        config = tap_config(
            s.grpc_upstream,
            str(s.upstream_ca_file) if s.upstream_ca_file else None,
            ListenerHooks(_Metrics(self._registry), infer),
            timeout_s=s.timeout_s,
            max_message=s.grpc_max_message_bytes,
            max_concurrent=s.grpc_max_concurrent_rpcs,
            max_header_bytes=s.max_header_bytes,
            unary=UNARY_METHODS,
            strip=self._decider.strip,
            connect_timeout_s=s.connect_timeout_s,
            max_connections=s.grpc_max_connections,
            header_timeout_s=s.header_timeout_s,
            idle_timeout_s=s.idle_timeout_s,
        )
        host, _, port = s.grpc_listen.rpartition(":")
        conns = self._conns
        try:
            if sock is not None:
                self._server = await loop.create_server(
                    lambda: TapConnection(config, conns), sock=sock
                )
            else:
                self._server = await loop.create_server(
                    lambda: TapConnection(config, conns), host.strip("[]"), int(port)
                )
        except OSError as exc:
            raise RuntimeError(
                f"proxy.grpc_listen = {s.grpc_listen!r}: cannot listen ({exc})"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweep = Sweep(loop, config, conns)
        self._channel = channel_for(s)

    def connections(self) -> list[TapConnection]:
        """The client connections open now (for tests and debugging; read, never changed)."""
        return list(self._conns)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._sweep is not None:
            self._sweep.stop()
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns):
                conn.close()
            # Calls in flight get `grace_s` to finish; then their connections are closed.
            deadline = time.monotonic() + grace_s
            while self._conns and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for conn in list(self._conns):
                conn.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
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
