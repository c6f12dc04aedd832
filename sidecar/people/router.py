"""The routes for the person a decision is about, and for those who serve them.

GET /decisions/{id}/reasons, /recourse, /notice (?format=html|json), /plot, and
POST|GET /decisions/{id}/contest, each also as /decisions/{call}/{row}/... like the
lookup. Explanations come from the lookup's own `Explanations` (one cache, the same
numbers). Roles: a case handler (the front office) reads reasons, recourse and the
notice and files contests, reading back only the contests it filed; reviewers,
auditors and admins read everything here; filing is for case handlers and admins.
Included before the review router: its /decisions/{id}/{row} would take these paths.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from sidecar.config import Settings
from sidecar.control.auth import Authenticator, Principal
from sidecar.control.lookup import Explanations
from sidecar.metrics import Registry
from sidecar.people.contest import ContestIn, ProxyFor, corrected_row, not_rescored, rescore
from sidecar.people.context import ContextFor, PeopleContext, Unanswerable
from sidecar.people.notice import NOTICE_CSP, notice_document, notice_html
from sidecar.people.options import RecourseCache
from sidecar.people.plot import waterfall_svg
from sidecar.people.reasons import principal_reasons, usable
from sidecar.review.api import RequestId, Row, _errors, read_body, refuse_unknown_query
from sidecar.review.model import CONTESTS_AT_HUB, CONTESTS_NOT_IN_FLEET, ReviewItem, ReviewStore

Found = tuple[dict[str, Any], ReviewItem | None]
T = TypeVar("T")


def create_people_router(
    *,
    settings: Settings,
    context: PeopleContext | ContextFor,
    authenticator: Authenticator,
    explanations: Explanations,
    store: ReviewStore,
    registry: Registry,
    proxy_url: str | ProxyFor,
) -> APIRouter:
    """The routes above; `proxy_url` is the data plane, through which corrections are scored.

    On a sidecar both are one value; at the hub, where decisions of many models meet,
    each is a function of the decision (its model's context, its model's proxy, or None
    where none is configured: the contest is then filed without a re-score, saying so)."""
    router = APIRouter(dependencies=[Depends(refuse_unknown_query)], tags=["people"])
    readers = Depends(authenticator.require("case_handler", "reviewer", "auditor", "admin"))
    developers = Depends(authenticator.require("reviewer", "auditor", "admin"))
    filers = Depends(authenticator.require("case_handler", "admin"))
    context_for = context if callable(context) else _always(context)
    proxy_for = proxy_url if callable(proxy_url) else _always(proxy_url)
    # As many as the on-demand explanations the lookup keeps: one per decision looked at.
    found_recourse = RecourseCache(max(1, settings.review.explanation_cache_size))
    refused = CONTESTS_NOT_IN_FLEET
    if settings.review.hub_url is not None:
        refused = f"{CONTESTS_AT_HUB}: POST {settings.review.hub_url.rstrip('/')}/decisions/{{id}}/contest"
    c = settings.contest
    body_limit = settings.review.max_body_bytes
    rescore_failed = registry.counter(
        "sidecar_contest_rescore_failures_total",
        "Contests whose corrected values could not be scored through the proxy",
    )

    def find(decision_id: str) -> Found:
        found = explanations.find(decision_id)
        if found is None:
            raise HTTPException(
                404, f"no decision {decision_id} (unknown, or older than decisions.retention)"
            )
        return found

    def answer(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Unanswerable as exc:
            raise HTTPException(exc.status, exc.message) from None

    def reasons_doc(decision: dict[str, Any], item: ReviewItem | None) -> dict[str, Any]:
        ctx = context_for(decision)
        explanation, source, error = explanations.explain(decision, item)
        body = principal_reasons(ctx, decision, usable(explanation, error))
        body["explanation_source"] = source
        return body

    def reasons(decision_id: str) -> dict[str, Any]:
        decision, item = find(decision_id)
        result: dict[str, Any] = answer(lambda: reasons_doc(decision, item))
        return result

    def recourse(decision_id: str) -> dict[str, Any]:
        decision, _ = find(decision_id)
        result: dict[str, Any] = answer(lambda: found_recourse.get(context_for(decision), decision))
        return result

    def contest_state(decision_id: str, who: Principal) -> dict[str, Any]:
        found = store.get_contest(decision_id)
        if found is None:
            raise HTTPException(404, f"decision {decision_id} has not been contested")
        if not authenticator.may_read_contest(who, found.filed_by):
            raise HTTPException(403, "a case handler reads only the contests it filed")
        item = store.get(decision_id)
        state = found.to_dict()
        state["status"] = item.status if item is not None else "unknown"
        state["outcome"] = item.outcome if item is not None else None
        state["decided_by"] = item.decided_by if item is not None else None
        state["time_to_resolution_s"] = (
            found.resolved_at - found.filed_at if found.resolved_at is not None else None
        )
        return state

    def notice(decision_id: str, fmt: str, who: Principal) -> Response:
        decision, item = find(decision_id)

        def build() -> dict[str, Any]:
            ctx = context_for(decision)
            why = reasons_doc(decision, item)
            options = found_recourse.get(ctx, decision) if not why["favourable"] else None
            filed = store.get_contest(decision_id)
            state = None
            if filed is not None and authenticator.may_read_contest(who, filed.filed_by):
                state = contest_state(decision_id, who)
            return notice_document(decision, why, options, ctx.catalogue, state)

        doc = answer(build)
        if fmt == "json":
            return JSONResponse(doc)
        return HTMLResponse(
            notice_html(doc),
            headers={"content-security-policy": NOTICE_CSP, "cache-control": "no-store"},
        )

    def plot(decision_id: str) -> Response:
        decision, item = find(decision_id)
        explanation, _, error = explanations.explain(decision, item)
        if explanation is None:
            raise HTTPException(409, f"the decision has no explanation: {error}")
        svg = waterfall_svg(
            explanation,
            decision.get("features"),
            f"Contributions to decision {decision['decision_id']}",
        )
        return Response(
            svg,
            media_type="image/svg+xml",
            headers={"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'"},
        )

    async def file(decision_id: str, request: Request, who: Principal) -> JSONResponse:
        if not store.takes_contests:
            raise HTTPException(409, refused.replace("{id}", decision_id))
        body = await read_body(request, body_limit, ContestIn)
        statement = body.statement.strip()
        if not statement or len(statement) > c.max_statement_chars:
            raise HTTPException(
                422,
                f"statement must be 1 to {c.max_statement_chars} characters"
                " (contest.max_statement_chars)",
            )
        decision, item = await run_in_threadpool(find, decision_id)
        earlier = await run_in_threadpool(store.get_contest, decision_id)
        if earlier is not None:
            # Idempotent: the same decision contested again is the contest already filed.
            return JSONResponse(await run_in_threadpool(contest_state, decision_id, who))
        ctx: PeopleContext | None = None
        no_context = ""
        try:
            ctx = context_for(decision)
        except Unanswerable as exc:
            # The person may contest whatever the configuration; only corrections need the
            # model's features and labels.
            no_context = exc.message
        rescored = None
        if body.corrected_values:
            if ctx is None:
                raise HTTPException(409, f"corrected values cannot be read: {no_context}")
            try:
                row = corrected_row(
                    decision.get("features") or [], ctx.feature_names, body.corrected_values
                )
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
            through = proxy_for(decision)
            if through is None:
                rescored = not_rescored(decision, row)
            else:
                rescored = await run_in_threadpool(
                    partial(
                        rescore,
                        through,
                        decision,
                        row,
                        names=ctx.feature_names,
                        labels=ctx.class_labels,
                        input_name=c.v2_input_name,
                        explain_header=settings.sampling.header,
                        timeout_s=c.rescore_timeout_s,
                    )
                )
                if rescored.get("error"):
                    rescore_failed.inc()
                elif ctx.favourable_label is not None:
                    rescored["favourable"] = rescored.get("prediction") == ctx.favourable_label
        try:
            why: dict[str, Any] | None = await run_in_threadpool(reasons_doc, decision, item)
        except Unanswerable as exc:
            why = {"error": exc.message}
        _, created = await run_in_threadpool(
            lambda: store.contest(
                decision,
                actor=who.name,
                statement=statement,
                corrected=body.corrected_values,
                rescore=rescored,
                reasons=why,
            )
        )
        state = await run_in_threadpool(contest_state, decision_id, who)
        return JSONResponse(state, status_code=201 if created else 200)

    conflict = _errors(401, 403, 404, 409, 422)
    for prefix, which in (
        ("/decisions/{request_id}", Depends(_first_row)),
        ("/decisions/{request_id}/{row}", Depends(_nth_row)),
    ):

        @router.get(prefix + "/reasons", responses=conflict)
        def get_reasons(decision_id: str = which, who: Principal = readers) -> Any:
            """The principal reasons for an unfavourable decision, in plain words."""
            return reasons(decision_id)

        @router.get(prefix + "/recourse", responses=conflict)
        def get_recourse(decision_id: str = which, who: Principal = readers) -> Any:
            """Changes to actionable features that would have made the decision favourable."""
            return recourse(decision_id)

        @router.get(
            prefix + "/notice",
            responses={**conflict, 200: _NOTICE_200},
            response_model=None,
        )
        def get_notice(
            decision_id: str = which,
            who: Principal = readers,
            fmt: Annotated[Literal["html", "json"], Query(alias="format")] = "html",
        ) -> Response:
            """The notice for the person: decision, reasons, what they can do, how to contest."""
            return notice(decision_id, fmt, who)

        @router.get(
            prefix + "/plot",
            responses={**conflict, 200: _PLOT_200},
            response_model=None,
        )
        def get_plot(decision_id: str = which, who: Principal = developers) -> Response:
            """The contributions as an SVG waterfall, from the lookup's numbers."""
            return plot(decision_id)

        @router.post(
            prefix + "/contest",
            status_code=201,
            responses={**conflict, **_errors(413, 415), 200: _CONTEST_200},
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ContestIn.model_json_schema()}},
                }
            },
        )
        async def post_contest(
            request: Request, decision_id: str = which, who: Principal = filers
        ) -> JSONResponse:
            """Contest the decision: a human review at the front of the queue (idempotent:
            201 when filed, 200 with the earlier contest when it already was)."""
            return await file(decision_id, request, who)

        @router.get(prefix + "/contest", responses=_errors(401, 403, 404, 422))
        def get_contest(decision_id: str = which, who: Principal = readers) -> Any:
            """The contest's state: its review, and how long resolving it took."""
            return contest_state(decision_id, who)

    return router


_NOTICE_200: dict[str, Any] = {
    "description": "The notice: a printable page (format=html), or its document (format=json)",
    "content": {"text/html": {"schema": {"type": "string"}}, "application/json": {}},
}
_PLOT_200: dict[str, Any] = {
    "description": "The waterfall",
    "content": {"image/svg+xml": {"schema": {"type": "string"}}},
}
_CONTEST_200: dict[str, Any] = {
    "description": "Already contested: the contest filed earlier (201 when filed now)",
    "content": {"application/json": {}},
}


def _always(value: T) -> Callable[[dict[str, Any]], T]:
    """One value for every decision (the sidecar's one model)."""

    def of(_decision: dict[str, Any]) -> T:
        return value

    return of


def _first_row(request_id: RequestId) -> str:
    return f"{request_id}/0"


def _nth_row(request_id: RequestId, row: Row) -> str:
    return f"{request_id}/{row}"
