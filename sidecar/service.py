"""Wiring: builds every part from the settings; the data plane on one loop, the control plane in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import orjson

from sidecar.config import ConfigError, Settings
from sidecar.config.check import check_settings
from sidecar.control.auth import TokenTable
from sidecar.control.bridge import SyncOp
from sidecar.control.metrics_view import snapshot
from sidecar.control.server import new_event_loop
from sidecar.control.store import DecisionStore
from sidecar.control.supervisor import ControlProcess, ControlProcessError
from sidecar.dataplane.decide import Decider
from sidecar.dataplane.groups import GroupExtractor
from sidecar.dataplane.grpc.server import GrpcServer
from sidecar.dataplane.http import DataPlane
from sidecar.dataplane.server import IdleReaper, Limits, serve
from sidecar.dataplane.upstream import Upstream
from sidecar.metrics import Registry
from sidecar.people.context import build_context
from sidecar.pipeline.explain import ExplainStage, build_explainer
from sidecar.pipeline.queue import Pipeline
from sidecar.pipeline.routing import ReviewRouter
from sidecar.pipeline.sampling import Sampler
from sidecar.pipeline.stages import Stages
from sidecar.review.forward import HubForwardingStore
from sidecar.review.model import ReviewStore
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks import EventSink, build_sink
from sidecar.sinks.events import ModelFacts
from sidecar.workers.listener import BridgeListener
from sidecar.workers.slot import BridgeSockets, WorkerSlot, bind_reuseport, for_worker
from sidecar.workers.supervisor import WorkersError, WorkerSet

__all__ = ["Service", "ServiceThread", "new_event_loop"]

log = logging.getLogger("sidecar")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


class Service:
    """The sidecar: data plane, control plane and the background stages between them."""

    def __init__(self, settings: Settings, slot: WorkerSlot | None = None) -> None:
        self.settings = settings
        self.registry = registry = Registry()
        # proxy.workers > 1: this process is worker 0 (slot None) or the worker `slot` says.
        self.slot = slot
        workers = settings.proxy.workers
        own = for_worker(settings, 0 if slot is None else slot.index)
        if workers > 1:
            from sidecar.decisions import set_worker

            set_worker(0 if slot is None else slot.index)
        # What `sidecar config --check` checks, in the same function, before any port opens
        # (a worker's settings were checked by the process that started it).
        if slot is None:
            check_settings(settings)
        if settings.review.store == "hub" and settings.sink.kind != "kafka":
            raise ConfigError(
                'review.store = "hub" needs sink.kind = "kafka" (the hub reads Kafka)'
            )
        # The model is loaded and checked before any port is opened: a model that
        # cannot be explained faithfully stops the start (ExplainerError names why).
        explainer = build_explainer(settings, registry)
        self._worker_socks: list[socket.socket] = []
        # gRPC listening sockets bound here when there are workers (each takes one);
        # with one process the gRPC listener binds its own.
        self._grpc_sock: socket.socket | None = None
        self._worker_grpc_socks: list[socket.socket | None] = []
        self._bridge_socks: BridgeSockets | None = None
        self.workers: WorkerSet | None = None
        self._control_sock: socket.socket | None = None
        if slot is not None:
            self._proxy_sock = slot.proxy_sock
            self._grpc_sock = slot.grpc_sock
            self.control_url = slot.control_url
        else:
            # Reasons, recourse and tokens checked against the model, also before any port
            # opens (the control process builds them again; here a bad key stops the start).
            build_context(settings, explainer)
            TokenTable.from_settings(settings.auth)
            if workers > 1:
                self._proxy_sock, *self._worker_socks = bind_reuseport(
                    settings.proxy.host, settings.proxy.port, workers
                )
                self._worker_grpc_socks = [None] * (workers - 1)
                if settings.proxy.grpc_listen is not None:
                    host, _, port = settings.proxy.grpc_listen.rpartition(":")
                    try:
                        grpc_socks = bind_reuseport(host.strip("[]"), int(port), workers)
                        self._grpc_sock = grpc_socks[0]
                        self._worker_grpc_socks = [*grpc_socks[1:]]
                    except OSError as exc:
                        # `sidecar serve` answers an OSError here "cannot listen: ...".
                        raise OSError(
                            exc.errno, f"proxy.grpc_listen = {settings.proxy.grpc_listen!r}: {exc}"
                        ) from None
            else:
                self._proxy_sock = bind(settings.proxy.host, settings.proxy.port)
            self._control_sock = bind(settings.control.host, settings.control.port)
            self.control_url = _url(self._control_sock)
        self.proxy_url = _url(self._proxy_sock)
        self.upstream = Upstream(settings.proxy)
        self.store = DecisionStore(own.decisions.retention, registry, own.decisions.retention_bytes)
        self.sink: EventSink = build_sink(own, registry)
        r = settings.review
        self.review_store: ReviewStore
        if r.store == "hub":
            self.review_store = HubForwardingStore(
                sink=self.sink, registry=registry, held_max_bytes=r.held_max_bytes
            )
        else:
            self.review_store = SqliteReviewStore(
                r.db_path, sink=self.sink, registry=registry, lease_seconds=r.lease_seconds
            )
        self.stages = stages = Stages(
            store=self.store,
            sink=self.sink,
            sampler=Sampler(settings.sampling),
            review_store=self.review_store,
            features=settings.sink.features,
            model=ModelFacts.of(
                settings.model.class_labels,
                settings.model.favourable_label,
                settings.model.decision_threshold,
                settings.model.decision_threshold_label,
            ),
        )
        self.explain_stage = (
            ExplainStage(settings, registry, explainer, stages.explained)
            if explainer is not None
            else None
        )
        stages.explain_stage = self.explain_stage
        self.pipeline = Pipeline(
            settings.decisions.queue_size,
            registry,
            stages=stages.ordered(),
            poll_s=settings.decisions.flush_interval_ms / 1000.0,
            gaps=self.sink.gaps,
            on_overload=settings.decisions.on_overload,
            sink_has_room=self.sink.has_room,
            held_stage=stages.review,
        )
        m = settings.model
        self.groups = GroupExtractor(settings.groups, registry)
        self.router = ReviewRouter(r) if r.enabled else None
        self.decider = Decider(
            registry=registry,
            max_rows=settings.proxy.max_rows_per_request,
            mlflow_model=m.name or "model",
            model_version=m.version,
            feature_names=list(m.feature_names),
            class_labels=list(m.class_labels),
            groups=self.groups,
            router=self.router,
            explain_header=settings.sampling.header.lower().encode("latin-1"),
            # A held client's status_url: the hub's, when the hub keeps the queue.
            control_url=r.hub_url if r.store == "hub" and r.hub_url else self.control_url,
        )
        self.dataplane = DataPlane(
            upstream=self.upstream,
            pipeline=self.pipeline,
            decider=self.decider,
            registry=registry,
            max_body=settings.proxy.max_inference_body_bytes,
        )
        # The gRPC listener, beside the HTTP one on the same loop (proxy.grpc_listen).
        self.grpc = (
            GrpcServer(
                settings.proxy,
                self.decider,
                self.pipeline,
                registry,
                body_field=settings.groups.body_field or None,
            )
            if settings.proxy.grpc_listen is not None
            else None
        )
        # What the control process may ask of this one (sidecar.control.bridge): cheap,
        # bounded reads of what only this process holds, and events for its sink.
        self._ready_checks: dict[str, Callable[[], Coroutine[Any, Any, bool]]] = {
            "upstream": self.upstream.reachable,
            "sink": self._sink_ready,
            "explainer": self._explainer_ready,
            "decision_pipeline": self._pipeline_alive,
            **{name: partial(self._sink_health, name) for name in self.sink.health()},
            **({"grpc_upstream": self.grpc.ready} if self.grpc is not None else {}),
        }
        self._created = time.time()
        self._listener: BridgeListener | None = None
        self.control: ControlProcess | None = None
        self._control_failure: str | None = None
        self._workers_failure: str | None = None
        self._data_server: asyncio.Server | None = None
        self._reaper: IdleReaper | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.started = threading.Event()

    def _bridge_ops(self) -> dict[str, SyncOp]:
        """The control process's ops: each tens of microseconds of this process's CPU (a lookup
        26 µs, a metrics snapshot 116 µs on a loaded 2-core VM: loadtests/bench_bridge)."""
        store, sink = self.store, self.sink

        def fragment(data: bytes | None) -> orjson.Fragment | None:
            # The bytes the store holds, sent as they are: not parsed and written again here.
            return None if data is None else orjson.Fragment(data)

        def by_request(request_id: str, after: str | None, limit: int) -> list[Any]:
            page, more = store.packed_by_request(request_id, after=after, limit=int(limit))
            return [[orjson.Fragment(d) for d in page], more]

        def by_request_sorted(request_id: str, after: str | None, limit: int) -> list[Any]:
            page, more = store.packed_by_request_sorted(request_id, after=after, limit=int(limit))
            return [[orjson.Fragment(d) for d in page], more]

        return {
            "hello": lambda: {
                "proxy_url": self.proxy_url,
                "control_url": self.control_url,
                "ready_checks": list(self._ready_checks),
                "started": self._created,
                "worker_bridges": [] if self._bridge_socks is None else self._bridge_socks.paths,
            },
            "decision": lambda decision_id: fragment(store.packed(decision_id)),
            "explanation": lambda decision_id: fragment(store.packed_explanation(decision_id)),
            "by_request": by_request,
            "by_request_sorted": by_request_sorted,
            "newest_forgotten": lambda: store.newest_forgotten,
            "metrics": lambda skip: snapshot(self.registry, skip),
            "publish_each": lambda kind, items: [sink.publish(kind, k, b) for k, b in items],
            "contains_many": store.contains_many,
            "has_room": lambda pending: sink.has_room(int(pending)),
        }

    async def _ready(self, name: str) -> bool:
        return await self._ready_checks[name]()

    def _control_failed(self, reason: str) -> None:
        self._control_failure = reason
        self.request_stop()

    def _workers_failed(self, reason: str) -> None:
        self._workers_failure = reason
        self.request_stop()

    async def _sink_ready(self) -> bool:
        return self.sink.ready()

    async def _explainer_ready(self) -> bool:
        # Not ready once explained decisions keep disagreeing with the server.
        return self.explain_stage is None or self.explain_stage.ready()

    async def _pipeline_alive(self) -> bool:
        return self.pipeline.alive()

    async def _sink_health(self, name: str) -> bool:
        return self.sink.health().get(name, False)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self.upstream.start()
        self.sink.start()
        if self.explain_stage is not None:
            self.explain_stage.start()
        self.pipeline.start()
        self._data_server, self._reaper = await serve(
            self.dataplane.handle, self._proxy_sock, Limits.of(self.settings.proxy)
        )
        if self.grpc is not None:
            await self.grpc.start(self._grpc_sock)
        if self.slot is not None:
            # A worker: the control process reaches it on its own socket; nothing else to start.
            self._listener = BridgeListener(
                self.slot.bridge_sock,
                ops=self._bridge_ops(),
                loop_ops={"ready": self._ready},
                loop=self._loop,
            )
            self._listener.start()
            sys.setswitchinterval(self.settings.control.gil_switch_interval_ms / 1000.0)
            gc.collect()
            gc.freeze()
            self.started.set()
            return
        if self._worker_socks:
            self._bridge_socks = BridgeSockets(len(self._worker_socks) + 1)
            self.workers = WorkerSet(
                settings=self.settings,
                count=len(self._worker_socks) + 1,
                sockets=list(
                    zip(
                        self._worker_socks,
                        self._bridge_socks.socks,
                        self._worker_grpc_socks,
                        strict=True,
                    )
                ),
                control_url=self.control_url,
                on_failure=self._workers_failed,
            )
            # Its start waits for other processes: off this loop, as the control process's.
            await self._loop.run_in_executor(None, self.workers.start)
        assert self._control_sock is not None
        self.control = ControlProcess(
            settings=self.settings,
            sock=self._control_sock,
            ops=self._bridge_ops(),
            loop_ops={"ready": self._ready},
            loop=self._loop,
            on_failure=self._control_failed,
        )
        # Process-wide: a thread that wants the interpreter gets it after this long. It
        # bounds what the background stages and the control bridge's thread can add to a
        # proxied call (with the control plane in this process's thread: p99 2.26x the
        # quiet sidecar's at 5 ms, 1.68x at 0.5 ms; bench_proxy --control-load).
        sys.setswitchinterval(self.settings.control.gil_switch_interval_ms / 1000.0)
        # Its start waits for another process: off this loop, so the data plane is never held up.
        await self._loop.run_in_executor(None, self.control.start)
        # Everything loaded at start (shap, numba, onnx, fastapi: ~200k objects) lives
        # forever; frozen, full collections stop walking it (measured: 150-200 ms pauses
        # in the proxy's tail before, ~45 ms after).
        gc.collect()
        gc.freeze()
        self.started.set()

    def request_stop(self) -> None:
        """Ask the service to stop; safe from any thread."""
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closing
            loop.call_soon_threadsafe(stopping.set)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.control is not None:
            await loop.run_in_executor(None, self.control.stop)
        if self.workers is not None:
            await loop.run_in_executor(None, self.workers.stop)
        if self._listener is not None:
            self._listener.close()
        if self._data_server is not None:
            self._data_server.close()
        if self._reaper is not None:
            self._reaper.stop()
        if self.grpc is not None:
            await self.grpc.stop()
        await loop.run_in_executor(None, self._stop_background)
        await self.upstream.close()
        for sock in (
            self._proxy_sock,
            self._control_sock,
            *self._worker_socks,
            self._grpc_sock,
            *self._worker_grpc_socks,
        ):
            if sock is not None:
                sock.close()
        if self._bridge_socks is not None:
            self._bridge_socks.close()

    def _stop_background(self) -> None:
        # In order: what the hot path handed over is recorded and explained, then flushed.
        if not self.pipeline.drain(5.0):
            # Stuck (spool.on_full = "block" with no room): give up on what waits, in gap records.
            self.sink.refuse_new()
        self.pipeline.close()
        if self.explain_stage is not None:
            self.explain_stage.close(5.0)
        self.review_store.close()
        self.sink.close(5.0)

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, stop cleanly."""
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        loop = asyncio.get_running_loop()
        assert self._stopping is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()
        if self._control_failure is not None:
            raise ControlProcessError(self._control_failure)
        if self._workers_failure is not None:
            raise WorkersError(self._workers_failure)


class ServiceThread:
    """Runs a Service on its own loop in a thread (the demo and the tests use it)."""

    def __init__(self, settings: Settings) -> None:
        self.service = Service(settings)
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sidecar", daemon=True)
        self._error: BaseException | None = None
        self._done = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.service.run())
        except BaseException as exc:
            self._error = exc
            self.service.started.set()
        finally:
            self._done.set()

    def __enter__(self) -> Service:
        self._thread.start()
        self.service.started.wait(30)
        if self._error is not None:
            raise self._error
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self.service.request_stop)
        self._done.wait(30)
