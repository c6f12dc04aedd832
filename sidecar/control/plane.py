"""Everything the control app serves, built in the control process from the settings.

The control process has its own registry, its own connection to the review
store (SQLite in WAL mode: both processes read and write the one file; each
transition is one write transaction), its own explainer loaded from the same
artifact (on-demand explanations run here, never in the data plane), and reaches
the data plane only through the bridge: decision lookups, the metrics' raw
values, readiness checks, and the events it emits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from explainers.explanation import Explanation
from sidecar.config import Settings
from sidecar.control.app import create_control_app
from sidecar.control.auth import Authenticator, TokenTable
from sidecar.control.bridge import BridgeClient, BridgeError
from sidecar.control.lookup import Explanations
from sidecar.control.metrics_view import CONTROL_GAUGES, MergedMetrics, RawFamily, restore_nan
from sidecar.control.remote import BridgeSink, RemoteCheck, RemoteDecisions
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
from sidecar.review.api import create_review_router
from sidecar.review.forward import HubForwardingStore
from sidecar.review.model import ReviewStore
from sidecar.review.store import SqliteReviewStore
from sidecar.workers.fanout import AllReady, FannedDecisions, Link, WorkerLink, fetch_metrics

log = logging.getLogger("sidecar.control")

Housekeeping = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Hello:
    """What the data plane tells the control process when it starts."""

    proxy_url: str
    control_url: str
    ready_checks: list[str]
    # When the data plane started (unix seconds): outcomes' `decision_known` horizon.
    started: float
    # proxy.workers > 1: where workers 1..N-1 listen for the control process.
    worker_bridges: tuple[str, ...] = ()

    @classmethod
    def of(cls, d: dict[str, Any]) -> Hello:
        return cls(
            proxy_url=str(d["proxy_url"]),
            control_url=str(d["control_url"]),
            ready_checks=[str(n) for n in d["ready_checks"]],
            started=float(d["started"]),
            worker_bridges=tuple(str(p) for p in d.get("worker_bridges", ())),
        )


@dataclass
class ControlPlane:
    app: FastAPI
    registry: Registry
    review_store: ReviewStore
    housekeeping: list[Housekeeping]


def _not_sampled(decision: Decision, explanation: Explanation) -> None:
    """The control process's explain stage is never started: it only explains on demand."""
    raise AssertionError("the control process's explain stage explains on demand only")


async def _bridge_failed(request: Request, exc: Exception) -> JSONResponse:
    # The data plane did not answer (restarting, stopping) or the answer could not cross.
    return JSONResponse({"detail": f"the data plane could not answer: {exc}"}, status_code=503)


def build_control_plane(settings: Settings, bridge: BridgeClient, hello: Hello) -> ControlPlane:
    registry = Registry()
    explainer = build_explainer(settings, registry)
    people = build_context(settings, explainer)
    sink = BridgeSink(bridge, registry)
    r = settings.review
    review_store: ReviewStore
    if r.store == "hub":
        review_store = HubForwardingStore(sink=sink, registry=registry)
    else:
        review_store = SqliteReviewStore(
            r.db_path, sink=sink, registry=registry, lease_seconds=r.lease_seconds
        )
    stage = (
        ExplainStage(settings, registry, explainer, _not_sampled) if explainer is not None else None
    )

    def explain_now(decision: Decision) -> dict[str, Any]:
        assert stage is not None
        body: dict[str, Any] = stage.explain_now(decision).to_dict()
        return body

    decisions: RemoteDecisions | FannedDecisions = RemoteDecisions(bridge)
    links: list[Link] = [bridge]
    if hello.worker_bridges:
        links += [WorkerLink(k, p) for k, p in enumerate(hello.worker_bridges, start=1)]
        decisions = FannedDecisions(links)
    auth = Authenticator(
        TokenTable.from_settings(settings.auth), settings.auth.group_attribute_roles
    )
    # One lookup (and one on-demand cache) for the review API and the people routes.
    explanations = Explanations(
        store=review_store,
        decisions=decisions,
        explain_now=explain_now if stage is not None else None,
        cache_size=r.explanation_cache_size,
        registry=registry,
    )
    review_api = create_review_router(
        settings=r,
        authenticator=auth,
        store=review_store,
        registry=registry,
        decisions=decisions,
        explanations=explanations,
        reasons_of=partial(reasons_or_none, people),
    )
    people_api = create_people_router(
        settings=settings,
        context=people,
        authenticator=auth,
        explanations=explanations,
        store=review_store,
        registry=registry,
        proxy_url=hello.proxy_url,
    )
    outcomes_api = create_outcomes_router(
        settings=settings.outcomes,
        authenticator=auth,
        sink=sink,
        rules=OutcomeRules(settings.model.class_labels),
        known=KnownDecisions(decisions, started=hello.started),
        registry=registry,
    )
    skip = sorted(CONTROL_GAUGES)

    def one_data_plane() -> list[RawFamily]:
        return restore_nan(bridge.call("metrics", skip))

    exposition = MergedMetrics(
        registry, one_data_plane if len(links) == 1 else partial(fetch_metrics, links, skip)
    )
    app = create_control_app(
        registry=registry,
        exposition=exposition,
        ready_checks=[
            (name, RemoteCheck(bridge, name) if len(links) == 1 else AllReady(links, name))
            for name in hello.ready_checks
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
    app.add_exception_handler(BridgeError, _bridge_failed)

    async def expire_leases() -> None:
        """Return expired review claims to the queue promptly, not only when the store is next touched."""
        period = min(r.lease_seconds / 4, 30.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            try:
                await loop.run_in_executor(None, review_store.expire_leases)
            except Exception:
                log.exception("expiring review leases failed")

    return ControlPlane(
        app=app, registry=registry, review_store=review_store, housekeeping=[expire_leases]
    )
