"""Wiring: builds every part from the settings and runs both planes on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any, Literal

import uvicorn

from sidecar.config import Settings
from sidecar.control.app import create_control_app
from sidecar.control.auth import Authenticator, TokenTable
from sidecar.control.store import DecisionStore
from sidecar.dataplane.groups import GroupExtractor
from sidecar.dataplane.http import DataPlane
from sidecar.dataplane.server import IdleReaper, serve
from sidecar.dataplane.upstream import Upstream
from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.pipeline.explain import ExplainStage, build_explainer
from sidecar.pipeline.queue import Batch, Pipeline
from sidecar.pipeline.routing import ReviewRouter
from sidecar.pipeline.sampling import Sampler
from sidecar.review.api import create_review_router
from sidecar.review.store import SqliteReviewStore
from sidecar.settings_check import check_settings
from sidecar.sinks import EventSink, build_sink
from sidecar.sinks.events import decision_event, explanation_event

log = logging.getLogger("sidecar")


class _Server(uvicorn.Server):
    """A uvicorn server (the control plane's) that leaves signals to the service."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
        # The model is loaded and checked before any port is opened: a model that
        # cannot be explained faithfully stops the start (ExplainerError names why).
        explainer = build_explainer(settings, registry)
        self._proxy_sock = bind(settings.proxy.host, settings.proxy.port)
        self._control_sock = bind(settings.control.host, settings.control.port)
        self.proxy_url = _url(self._proxy_sock)
        self.control_url = _url(self._control_sock)
        self.upstream = Upstream(settings.proxy)
        self.store = DecisionStore(settings.decisions.retention, registry)
        self.sink: EventSink = build_sink(settings, registry)
        self._features_policy = settings.sink.features
        self.sampler = Sampler(settings.sampling)
        self.explain_stage = (
            ExplainStage(settings, registry, explainer, self._explained)
            if explainer is not None
            else None
        )
        r = settings.review
        self.router = ReviewRouter(r) if r.enabled else None
        self.review_store = SqliteReviewStore(
            r.db_path, sink=self.sink, registry=registry, lease_seconds=r.lease_seconds
        )
        self.groups = GroupExtractor(settings.groups, registry)
        self.pipeline = Pipeline(
            settings.decisions.queue_size,
            registry,
            # Sampling comes first so events and the lookup store record it; explaining is
            # queued only after "record", or a fast explanation could find no decision to
            # attach to in the lookup store.
            stages=[
                ("sample", self._sample),
                ("record", self._record),
                ("publish", self._publish),
                ("explain", self._explain),
                ("review", self._review),
            ],
            poll_s=settings.decisions.flush_interval_ms / 1000.0,
        )
        m = settings.model
        self.dataplane = DataPlane(
            upstream=self.upstream,
            pipeline=self.pipeline,
            registry=registry,
            max_body=settings.proxy.max_inference_body_bytes,
            max_rows=settings.proxy.max_rows_per_request,
            mlflow_model=m.name or "model",
            model_version=m.version,
            feature_names=list(m.feature_names),
            class_labels=list(m.class_labels),
            groups=self.groups,
            router=self.router,
            explain_header=settings.sampling.header.lower().encode("latin-1"),
            control_url=self.control_url,
        )
        auth = Authenticator(
            TokenTable.from_settings(settings.auth), settings.auth.group_attribute_roles
        )
        review_api = create_review_router(
            settings=r,
            authenticator=auth,
            store=self.review_store,
            registry=registry,
            decisions=self.store,
            explain_now=self._explain_now if self.explain_stage is not None else None,
        )
        self.control_app = create_control_app(
            registry=registry,
            ready_checks=[("upstream", self.upstream.reachable), ("sink", self._sink_ready)],
            routers=[review_api],
            guard=auth.require("auditor", "admin"),
            open_health=settings.control.open_health,
            open_metrics=settings.control.open_metrics,
        )
        self._servers: list[_Server] = []
        self._data_server: asyncio.Server | None = None
        self._reaper: IdleReaper | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.started = threading.Event()

    # -- pipeline stages (the background thread, in this order) --
    def _record(self, batches: list[Batch]) -> None:
        self.store.add([d for b in batches for d in b.decisions])

    def _sample(self, batches: list[Batch]) -> None:
        if self.explain_stage is not None:
            for b in batches:
                self.sampler.select(b.decisions, b.explain_requested)

    def _publish(self, batches: list[Batch]) -> None:
        policy = self._features_policy
        self.sink.publish_many(
            "decision",
            [(d.decision_id, decision_event(d, policy)) for b in batches for d in b.decisions],
        )

    def _explain(self, batches: list[Batch]) -> None:
        if self.explain_stage is not None:
            chosen = [d for b in batches for d in b.decisions if d.sampled]
            if chosen:
                self.explain_stage.submit(chosen)

    def _review(self, batches: list[Batch]) -> None:
        for batch in batches:
            held = batch.held
            for d in batch.decisions:
                if d.review is None:
                    continue
                explanation = self.store.get_explanation(d.decision_id)
                if held is not None:
                    self.review_store.enqueue(d, explanation, held.body, held.headers, held.status)
                else:
                    self.review_store.enqueue(d, explanation)

    # -- explanation results (explainer threads) --
    def _explained(self, decision: Decision, explanation: Any) -> None:
        body = explanation.to_dict()
        self.store.set_explanation(decision, body)
        if decision.review is not None:
            self.review_store.set_explanation(decision.decision_id, body)
        self.sink.publish("explanation", decision.decision_id, explanation_event(decision, body))

    def _explain_now(self, decision: Decision) -> dict[str, Any]:
        assert self.explain_stage is not None
        body: dict[str, Any] = self.explain_stage.explain_now(decision).to_dict()
        return body

    async def _sink_ready(self) -> bool:
        return self.sink.ready()

    def _server(self, app: Any, lifespan: Literal["on", "off"]) -> _Server:
        config = uvicorn.Config(
            app,
            http="httptools",
            loop="none",
            lifespan=lifespan,
            access_log=False,
            server_header=False,
            date_header=False,
            log_level="warning",
            timeout_keep_alive=75,
            backlog=2048,
        )
        return _Server(config)

    async def start(self) -> None:
        await self.upstream.start()
        self.sink.start()
        if self.explain_stage is not None:
            self.explain_stage.start()
        self.pipeline.start()
        self._data_server, self._reaper = await serve(
            self.dataplane.handle, self._proxy_sock, self.settings.proxy.idle_timeout_s
        )
        self._housekeeping = asyncio.get_running_loop().create_task(self._expire_leases())
        self._servers = [self._server(self.control_app, "on")]
        self._tasks = [
            asyncio.get_running_loop().create_task(self._servers[0]._serve([self._control_sock]))
        ]
        while not all(s.started for s in self._servers):
            for t in self._tasks:
                if t.done():
                    t.result()  # surfaces a start failure
            await asyncio.sleep(0.005)
        # Everything loaded at start (shap, numba, onnx, fastapi: ~200k objects) lives
        # forever; frozen, full collections stop walking it (measured: 150-200 ms pauses
        # in the proxy's tail before, ~45 ms after).
        gc.collect()
        gc.freeze()
        self.started.set()

    def request_stop(self) -> None:
        for s in self._servers:
            s.should_exit = True

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
        self.request_stop()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._data_server is not None:
            self._data_server.close()
        if self._reaper is not None:
            self._reaper.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._stop_background)
        await self.upstream.close()
        for sock in (self._proxy_sock, self._control_sock):
            sock.close()

    def _stop_background(self) -> None:
        # In order: what the hot path handed over is recorded and explained, then flushed.
        self.pipeline.drain(5.0)
        self.pipeline.close()
        if self.explain_stage is not None:
            self.explain_stage.close(5.0)
        self.review_store.close()
        self.sink.close(5.0)

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, stop cleanly."""
        await self.start()
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stopping.set)
        waiter = loop.create_task(stopping.wait())
        await asyncio.wait([waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await self.stop()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed: measured cheaper per request than the default loop."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


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
