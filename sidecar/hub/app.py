"""The hub's HTTP app: the sidecar's control-plane app over the fleet's database.

The routes are the control plane's own (`sidecar.review.api`: lookup, review
API, console, audit; `sidecar.control.app`: metrics and health), with the
same tokens and roles; the hub adds the wider search of `GET /decisions`
(by model, time range and group as well as by request id), registered first
so it answers that path.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from psycopg_pool import AsyncConnectionPool

from sidecar.config import ReviewSettings
from sidecar.control.app import ReadyCheck, create_control_app
from sidecar.control.auth import Authenticator, Principal
from sidecar.control.lookup import ExplainFn, Explanations
from sidecar.control.store import MAX_PAGE
from sidecar.hub.db import AsyncConn
from sidecar.hub.lookup import HubDecisions
from sidecar.hub.lookup_fast import FastLookup
from sidecar.hub.lookup_route import LOOKUP_ROLES, Lookup, create_lookup_router
from sidecar.hub.people import HubPeople
from sidecar.hub.review import HubReviewStore
from sidecar.metrics import Registry
from sidecar.review.api import create_review_router, refuse_unknown_query
from sidecar.review.schemas import DecisionPageOut, ErrorOut, decision_out

MAX_GROUP_FILTERS = 8


def parse_groups(values: list[str]) -> dict[str, str]:
    """`group=attr=value` query values as a map; 422 for a malformed one."""
    if len(values) > MAX_GROUP_FILTERS:
        raise HTTPException(422, f"at most {MAX_GROUP_FILTERS} group filters")
    out: dict[str, str] = {}
    for v in values:
        attr, sep, value = v.partition("=")
        if not sep or not attr.strip() or not value.strip():
            raise HTTPException(422, f"group filter {v!r} must be attribute=value")
        out[attr.strip()] = value.strip()
    return out


def create_search_router(authenticator: Authenticator, decisions: HubDecisions) -> APIRouter:
    router = APIRouter(dependencies=[Depends(refuse_unknown_query)])
    anyone = Depends(authenticator.require("reviewer", "auditor", "admin"))
    codes = {401: "Missing or unknown bearer token", 403: "Role forbids", 422: "Bad parameters"}

    @router.get(
        "/decisions",
        tags=["decisions"],
        responses={c: {"model": ErrorOut, "description": d} for c, d in codes.items()},
    )
    def search(
        who: Principal = anyone,
        request_id: Annotated[str | None, Query(pattern=r"^[!-~]{1,128}$")] = None,
        model: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        since: Annotated[
            dt.datetime | None, Query(description="From (inclusive), RFC 3339")
        ] = None,
        until: Annotated[dt.datetime | None, Query(description="To (exclusive), RFC 3339")] = None,
        group: Annotated[
            list[str], Query(max_length=300, description="attribute=value; repeatable")
        ] = [],  # noqa: B006 - FastAPI copies defaults per request
        after: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    ) -> DecisionPageOut:
        """Every decision of the fleet that matches all the filters given (at least one), in
        decision id order (time order), a page at a time."""
        groups = parse_groups(group)
        if request_id is None and model is None and since is None and not groups:
            raise HTTPException(422, "give at least one of request_id, model, since, group")
        if groups and not authenticator.sees_group_attributes(who):
            raise HTTPException(403, f"role {who.role} may not filter by group attributes")
        for name, when in (("since", since), ("until", until)):
            if when is not None and when.tzinfo is None:
                raise HTTPException(422, f"{name} needs a time zone (e.g. Z)")
        found, more = decisions.search(
            request_id=request_id,
            model=model,
            since=since,
            until=until,
            groups=groups or None,
            after=after,
            limit=limit,
        )
        show = authenticator.sees_group_attributes(who)
        page = [decision_out(d, show) for d in found]
        return DecisionPageOut(decisions=page, next_after=page[-1].decision_id if more else None)

    return router


def create_hub_app(
    *,
    authenticator: Authenticator,
    review: ReviewSettings,
    store: HubReviewStore,
    decisions: HubDecisions,
    lookup_pool: AsyncConnectionPool[AsyncConn],
    registry: Registry,
    ready_checks: list[ReadyCheck],
    open_health: bool = True,
    open_metrics: bool = True,
    explain_now: ExplainFn | None = None,
    people: HubPeople | None = None,
    monitor: APIRouter | None = None,
) -> FastAPI:
    # One lookup (one cache of explanations) for the review and the people routes.
    explanations = Explanations(
        store=store,
        decisions=decisions,
        explain_now=explain_now,
        cache_size=review.explanation_cache_size,
        registry=registry,
    )
    review_api = create_review_router(
        settings=review,
        authenticator=authenticator,
        store=store,
        registry=registry,
        decisions=decisions,
        explain_now=explain_now,
        explanations=explanations,
        reasons_of=people.reasons_of if people is not None else None,
    )
    people_api = (
        []
        if people is None
        else [
            people.router(
                authenticator=authenticator,
                explanations=explanations,
                store=store,
                registry=registry,
            )
        ]
    )
    # The lookup by id in one statement, ahead of the review router's three-query one.
    lookup = Lookup(
        authenticator,
        decisions.pool,
        store,
        explanations,
        reasons_of=people.reasons_of if people is not None else None,
        explains=explain_now is not None,
    )
    lookup_api = create_lookup_router(authenticator, lookup)
    app = create_control_app(
        registry=registry,
        ready_checks=ready_checks,
        # The lookup's row path is {row:int}: the people routes' /decisions/{id}/reasons etc. fall through.
        routers=[
            create_search_router(authenticator, decisions),
            lookup_api,
            *people_api,
            review_api,
        ]
        + ([monitor] if monitor is not None else []),
        guard=authenticator.require("auditor", "admin"),
        open_health=open_health,
        open_metrics=open_metrics,
    )
    app.title = "sidecar hub"
    # The plain lookup answered in front of FastAPI's routing (see lookup_fast): the same answer,
    # on the event loop over `lookup_pool`, which the middleware opens with the app's lifespan.
    app.add_middleware(
        FastLookup,
        lookup=lookup,
        pool=lookup_pool,
        require=authenticator.check(*LOOKUP_ROLES),
    )
    return app
