"""Wiring: builds every part from the settings; the data plane on one loop, the control plane on its own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
from functools import partial
from typing import Any

from sidecar.config import ConfigError, Settings
from sidecar.config.check import check_settings
from sidecar.control.app import create_control_app
from sidecar.control.auth import Authenticator, TokenTable
from sidecar.control.lookup import Explanations
from sidecar.control.server import ControlPlaneThread, new_event_loop
from sidecar.control.store import DecisionStore
from sidecar.dataplane.decide import Decider
from sidecar.dataplane.groups import GroupExtractor
from sidecar.dataplane.grpc.server import GrpcServer
from sidecar.dataplane.http import DataPlane
from sidecar.dataplane.server import IdleReaper, Limits, serve
from sidecar.dataplane.upstream import Upstream
from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.monitor.dashboard import create_dashboard_router
from sidecar.outcomes.api import create_outcomes_router
from sidecar.outcomes.known import KnownDecisions
from sidecar.outcomes.rules import OutcomeRules
from sidecar.people.context import build_context
from sidecar.people.reasons import reasons_or_none
from sidecar.people.router import create_people_router
from sidecar.pipeline.explain import ExplainStage, build_explainer
from sidecar.pipeline.queue import Pipeline
from sidecar.pipeline.routing import ReviewRouter
from sidecar.pipeline.sampling import Sampler
from sidecar.pipeline.stages import Stages
from sidecar.review.api import create_review_router
from sidecar.review.forward import HubForwardingStore
from sidecar.review.model import ReviewStore
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks import EventSink, build_sink
from sidecar.sinks.events import ModelFacts

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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = registry = Registry()
        # What `sidecar config --check` checks, in the same function, before any port opens.
        check_settings(settings)
        if settings.review.store == "hub" and settings.sink.kind != "kafka":
            raise ConfigError(
                'review.store = "hub" needs sink.kind = "kafka" (the hub reads Kafka)'
            )
        # The model is loaded and checked before any port is opened: a model that
        # cannot be explained faithfully stops the start (ExplainerError names why).
        explainer = build_explainer(settings, registry)
        # Reasons and recourse checked against the model, also before any port opens.
        people = build_context(settings, explainer)
        self._proxy_sock = bind(settings.proxy.host, settings.proxy.port)
        self._control_sock = bind(settings.control.host, settings.control.port)
        self.proxy_url = _url(self._proxy_sock)
        self.control_url = _url(self._control_sock)
        self.upstream = Upstream(settings.proxy)
        self.store = DecisionStore(
            settings.decisions.retention, registry, settings.decisions.retention_bytes
        )
        self.sink: EventSink = build_sink(settings, registry)
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
        auth = Authenticator(
            TokenTable.from_settings(settings.auth), settings.auth.group_attribute_roles
        )
        # One lookup (and one on-demand cache) for the review API and the people routes.
        explanations = Explanations(
            store=self.review_store,
            decisions=self.store,
            explain_now=self._explain_now if self.explain_stage is not None else None,
            cache_size=r.explanation_cache_size,
            registry=registry,
        )
        review_api = create_review_router(
            settings=r,
            authenticator=auth,
            store=self.review_store,
            registry=registry,
            decisions=self.store,
            explanations=explanations,
            reasons_of=partial(reasons_or_none, people),
        )
        people_api = create_people_router(
            settings=settings,
            context=people,
            authenticator=auth,
            explanations=explanations,
            store=self.review_store,
            registry=registry,
            proxy_url=self.proxy_url,
        )
        outcomes_api = create_outcomes_router(
            settings=settings.outcomes,
            authenticator=auth,
            sink=self.sink,
            rules=OutcomeRules(settings.model.class_labels),
            known=KnownDecisions(self.store),
            registry=registry,
        )
        self.control_app = create_control_app(
            registry=registry,
            ready_checks=[
                ("upstream", self.upstream.reachable),
                ("sink", self._sink_ready),
                ("explainer", self._explainer_ready),
                ("decision_pipeline", self._pipeline_alive),
                *((name, partial(self._sink_health, name)) for name in self.sink.health()),
                *([("grpc_upstream", self.grpc.ready)] if self.grpc is not None else []),
            ],
            # People first: the review router's /decisions/{id}/{row} would take their paths.
            routers=[
                people_api,
                review_api,
                outcomes_api,
                create_dashboard_router(settings, auth.require("auditor", "admin")),
            ],
            guard=auth.require("auditor", "admin"),
            open_health=settings.control.open_health,
            open_metrics=settings.control.open_metrics,
        )
        self._control: ControlPlaneThread | None = None
        self._data_server: asyncio.Server | None = None
        self._reaper: IdleReaper | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.started = threading.Event()

    def _explain_now(self, decision: Decision) -> dict[str, Any]:
        assert self.explain_stage is not None
        body: dict[str, Any] = self.explain_stage.explain_now(decision).to_dict()
        return body

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
            await self.grpc.start()
        self._control = ControlPlaneThread(
            self.control_app,
            self._control_sock,
            housekeeping=[self._expire_leases],
            on_exit=self.request_stop,
            nice=self.settings.control.nice,
        )
        # Process-wide: a thread that wants the interpreter gets it after this long. With
        # the control plane niced, this bounds what its work can add to a proxied call
        # (bench_proxy --control-load: p99 2.26x the quiet sidecar's at 5 ms, 1.68x with
        # nice 19 and 0.5 ms, same machine and hour).
        sys.setswitchinterval(self.settings.control.gil_switch_interval_ms / 1000.0)
        # Its start waits on a thread: off this loop, so the data plane is never held up.
        await self._loop.run_in_executor(None, self._control.start)
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

    async def _expire_leases(self) -> None:
        """Return expired review claims to the queue promptly, not only when the store is next touched."""
        period = min(self.settings.review.lease_seconds / 4, 30.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            try:
                await loop.run_in_executor(None, self.review_store.expire_leases)
            except Exception:
                log.exception("expiring review leases failed")

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._control is not None:
            await loop.run_in_executor(None, self._control.stop)
        if self._data_server is not None:
            self._data_server.close()
        if self._reaper is not None:
            self._reaper.stop()
        if self.grpc is not None:
            await self.grpc.stop()
        await loop.run_in_executor(None, self._stop_background)
        await self.upstream.close()
        for sock in (self._proxy_sock, self._control_sock):
            sock.close()

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
