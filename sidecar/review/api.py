"""The review API, the decision lookup and the reviewer console, as one router.

Roles: a reviewer lists, reads, claims and decides; an auditor reads and
checks the audit chain; an admin does both and may release anyone's claim.
Object-level rules live in the store (a reviewer decides only what they
claimed) and group attributes are shown only to `auth.group_attribute_roles`.
Handlers that touch SQLite are plain functions, so FastAPI runs them in its
thread pool and the event loop never waits on the database.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from sidecar.config import ReviewSettings
from sidecar.control.auth import Authenticator, Principal
from sidecar.control.lookup import DecisionSource, ExplainFn, Explanations
from sidecar.control.store import MAX_PAGE
from sidecar.metrics import Registry
from sidecar.review import console
from sidecar.review.model import ReviewError, ReviewStore
from sidecar.review.schemas import (
    AuditHeadOut,
    AuditPageOut,
    DecideIn,
    DecisionPageOut,
    ErrorOut,
    ItemOut,
    ItemPageOut,
    LookupOut,
    MeOut,
    decision_out,
    item_out,
    record_out,
    summary_out,
    verify_out,
)

# A call id (x-decision-id): the sidecar mints UUIDv7s; the wider shape also admits the
# ids of review items stored before ids were minted.
RequestId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9._:\-]{1,128}$", description="The call id (x-decision-id)")
]
Row = Annotated[int, Path(ge=0, le=1_000_000, description="The row within the request")]
_MAX_SEQ = 2**62
# (decision, explanation) -> the principal reasons, or None when none can be given.
ReasonsFn = Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any] | None]
M = TypeVar("M", bound=BaseModel)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "Missing or unknown bearer token",
        403: "The role or the object-level rules forbid this",
        404: "No such item or decision",
        409: "The item's state changed: claimed by someone else, lease expired, or decided",
        413: "Body too large (review.max_body_bytes)",
        415: "Body must be application/json",
        422: "Invalid parameters or body",
    }
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def refuse_unknown_query(request: Request) -> None:
    """422 for query parameters the route does not take: a typo must not silently widen a filter.

    A coroutine, so FastAPI runs it on the loop, not with a thread-pool hop: it never blocks."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise HTTPException(
            422,
            [
                {
                    "type": "extra_forbidden",
                    "loc": ["query", name],
                    "msg": "unknown query parameter",
                }
                for name in unknown
            ],
        )


def _refused(exc: ReviewError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


async def _read_json(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "the body must be JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes (review.max_body_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(
                413, f"the body is larger than {limit} bytes (review.max_body_bytes)"
            )
    return bytes(body)


async def read_body(request: Request, limit: int, model: type[M]) -> M:
    """A JSON body of at most `limit` bytes as `model` (the review's and the people's POSTs):
    415 when it is not JSON, 413 past the limit, 422 with pydantic's errors when it does not fit."""
    raw = await _read_json(request, limit)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(
            422, exc.errors(include_url=False, include_context=False, include_input=False)
        ) from None


def create_review_router(
    *,
    settings: ReviewSettings,
    authenticator: Authenticator,
    store: ReviewStore,
    registry: Registry,
    decisions: DecisionSource | None = None,
    explain_now: ExplainFn | None = None,
    explanations: Explanations | None = None,
    reasons_of: ReasonsFn | None = None,
) -> APIRouter:
    """Everything under /review/, GET /decisions/{id}, and the console at / and /console/.

    `explanations` is shared with other routers that read explanations (one cache);
    `reasons_of` adds the principal reasons to the lookup."""
    # Every route is a coroutine and makes at most one thread-pool hop, for the store or the
    # bridge: FastAPI runs a plain-function route in its thread pool and then its response's
    # validation in a second hop. Each hop is a burst of work beside the data plane on a
    # shared core; /review/me cost 0.31 ms of CPU as a plain function, 0.08 as a coroutine.
    router = APIRouter(dependencies=[Depends(refuse_unknown_query)])
    if explanations is None:
        explanations = Explanations(
            store=store,
            decisions=decisions,
            explain_now=explain_now,
            cache_size=settings.explanation_cache_size,
            registry=registry,
        )
    anyone = Depends(authenticator.require("reviewer", "auditor", "admin"))
    deciders = Depends(authenticator.require("reviewer", "admin"))
    auditors = Depends(authenticator.require("auditor", "admin"))
    page_size = settings.max_page_size
    body_limit = settings.max_body_bytes
    max_reason = settings.max_reason_chars
    tags: list[str | Any] = ["review"]

    def show(who: Principal) -> bool:
        return authenticator.sees_group_attributes(who)

    def detail(item_id: str, who: Principal) -> ItemOut:
        item = store.get(item_id)
        if item is None:
            raise HTTPException(404, f"no review item {item_id}")
        explanation, _, error = explanations.explain(item.decision, item)
        contest = store.get_contest(item_id)
        return item_out(
            item, show(who), explanation, error, None if contest is None else contest.to_dict()
        )

    def changed(transition: Callable[[str, str], object], item_id: str, who: Principal) -> ItemOut:
        """A claim, a release or a decision, then the item as it is now: one thread hop."""
        try:
            transition(item_id, who.name)
        except ReviewError as exc:
            raise _refused(exc) from None
        return detail(item_id, who)

    @router.get("/review/me", tags=tags, responses=_errors(401))
    async def me(who: Principal = anyone) -> MeOut:
        """Who the token belongs to (the console's login check)."""
        return MeOut(name=who.name, role=who.role, sees_group_attributes=show(who))

    @router.get("/review/items", tags=tags, responses=_errors(401, 403, 422))
    async def list_items(
        who: Principal = anyone,
        status: Literal["pending", "claimed", "decided"] | None = None,
        reason: Annotated[str | None, Query(max_length=128)] = None,
        model: Annotated[str | None, Query(max_length=256)] = None,
        mine: bool = False,
        # Contested items have negative seqs (they lead the queue): a cursor may be negative.
        after: Annotated[
            int, Query(ge=-_MAX_SEQ, le=_MAX_SEQ, description="Cursor: next_after")
        ] = 0,
        limit: int = Query(min(50, page_size), ge=1, le=page_size),
    ) -> ItemPageOut:
        """The queue, oldest first, with filters; `mine` keeps the caller's claims."""

        def page() -> ItemPageOut:
            items = store.list_summaries(
                status=status,
                reason=reason,
                model=model,
                claimed_by=who.name if mine else None,
                after=after,
                limit=limit + 1,
            )
            more = len(items) > limit
            items = items[:limit]
            return ItemPageOut(
                items=[summary_out(i) for i in items],
                next_after=items[-1].seq if more else None,
                counts=store.counts(),
            )

        return await run_in_threadpool(page)

    @router.get("/review/items/{request_id}", tags=tags, responses=_errors(401, 403, 404, 422))
    async def get_item_first_row(request_id: RequestId, who: Principal = anyone) -> ItemOut:
        """A review item by its decision id's request part (row 0); also a hold ticket's status."""
        return await run_in_threadpool(detail, f"{request_id}/0", who)

    @router.get(
        "/review/items/{request_id}/{row}", tags=tags, responses=_errors(401, 403, 404, 422)
    )
    async def get_item(request_id: RequestId, row: Row, who: Principal = anyone) -> ItemOut:
        """A review item: the decision, its explanation, its state and, when held, the final outcome."""
        return await run_in_threadpool(detail, f"{request_id}/{row}", who)

    @router.post(
        "/review/items/{request_id}/{row}/claim",
        tags=tags,
        responses=_errors(401, 403, 404, 409, 422),
    )
    async def claim(request_id: RequestId, row: Row, who: Principal = deciders) -> ItemOut:
        """Take the item for `review.lease_seconds` (claiming again renews); 409 when someone else holds it."""
        return await run_in_threadpool(changed, store.claim, f"{request_id}/{row}", who)

    @router.post(
        "/review/items/{request_id}/{row}/release",
        tags=tags,
        responses=_errors(401, 403, 404, 409, 422),
    )
    async def release(request_id: RequestId, row: Row, who: Principal = deciders) -> ItemOut:
        """Give a claim back to the queue (an admin may release anyone's)."""
        return await run_in_threadpool(
            changed,
            partial(store.release, force=who.role == "admin"),
            f"{request_id}/{row}",
            who,
        )

    @router.post(
        "/review/items/{request_id}/{row}/decision",
        tags=tags,
        responses=_errors(401, 403, 404, 409, 413, 415, 422),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _decide_schema(max_reason)}},
            }
        },
    )
    async def decide(
        request_id: RequestId, row: Row, request: Request, who: Principal = deciders
    ) -> ItemOut:
        """Approve the model's answer or override it with an outcome; a reason is required."""
        body = await read_body(request, body_limit, DecideIn)
        if len(body.reason) > max_reason:
            raise HTTPException(
                422, f"reason is longer than {max_reason} characters (review.max_reason_chars)"
            )
        verdict = partial(
            store.decide, action=body.action, outcome=body.outcome, reason=body.reason.strip()
        )
        return await run_in_threadpool(changed, verdict, f"{request_id}/{row}", who)

    @router.get(
        "/review/items/{request_id}/{row}/history",
        tags=tags,
        responses=_errors(401, 403, 404, 422),
    )
    async def history(request_id: RequestId, row: Row, who: Principal = anyone) -> AuditPageOut:
        """The item's audit records, oldest first."""
        item_id = f"{request_id}/{row}"

        def page() -> AuditPageOut:
            if store.get(item_id) is None:
                raise HTTPException(404, f"no review item {item_id}")
            return AuditPageOut(
                records=[record_out(r) for r in store.history(item_id)], next_after=None
            )

        return await run_in_threadpool(page)

    @router.get("/review/audit", tags=tags, responses=_errors(401, 403, 422))
    async def audit_records(
        who: Principal = auditors,
        after: Annotated[int, Query(ge=0, le=_MAX_SEQ)] = 0,
        limit: int = Query(min(50, page_size), ge=1, le=page_size),
    ) -> AuditPageOut:
        """The audit chain, from `after` (a seq)."""
        recs = await run_in_threadpool(store.audit_records, after=after, limit=limit + 1)
        more = len(recs) > limit
        recs = recs[:limit]
        return AuditPageOut(
            records=[record_out(r) for r in recs], next_after=recs[-1].seq if more else None
        )

    @router.get("/review/audit/head", tags=tags, responses=_errors(401, 403))
    async def audit_head(who: Principal = anyone) -> AuditHeadOut:
        """The newest record's seq and hash: keep it to detect truncation later."""
        seq, digest = await run_in_threadpool(store.audit_head)
        return AuditHeadOut(seq=seq, hash=digest)

    @router.get("/review/audit/verify", tags=tags, responses=_errors(401, 403, 422))
    async def audit_verify(
        who: Principal = auditors,
        head: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    ) -> Any:
        """Walk the chain; `head` is a hash kept earlier, to catch truncation."""
        return verify_out(await run_in_threadpool(store.verify, head))

    @router.get("/decisions", tags=["decisions"], responses=_errors(401, 403, 422))
    async def list_by_request(
        request_id: Annotated[
            str,
            Query(
                pattern=r"^[!-~]{1,128}$",
                description="The client's request id (x-request-id, or a V2 body's id)",
            ),
        ],
        who: Principal = anyone,
        after: Annotated[
            str | None, Query(max_length=200, description="next_after of the previous page")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    ) -> DecisionPageOut:
        """Every recent decision that carries the client's request id, oldest first, a page at
        a time: a reused id (retries, a constant id) lists each call's decisions."""
        found, more = await run_in_threadpool(
            explanations.by_request, request_id, after=after, limit=limit
        )
        page = [decision_out(d, show(who)) for d in found]
        return DecisionPageOut(decisions=page, next_after=page[-1].decision_id if more else None)

    @router.get(
        "/decisions/{request_id}", tags=["decisions"], responses=_errors(401, 403, 404, 422)
    )
    async def lookup_first_row(request_id: RequestId, who: Principal = anyone) -> LookupOut:
        """A decision (row 0 of the request) and why it was made."""
        return await run_in_threadpool(lookup, f"{request_id}/0", who)

    @router.get(
        "/decisions/{request_id}/{row}", tags=["decisions"], responses=_errors(401, 403, 404, 422)
    )
    async def lookup_row(request_id: RequestId, row: Row, who: Principal = anyone) -> LookupOut:
        """A decision and why it was made: its explanation, computed now if it was not sampled."""
        return await run_in_threadpool(lookup, f"{request_id}/{row}", who)

    def lookup(decision_id: str, who: Principal) -> LookupOut:
        found = explanations.find(decision_id)
        if found is None:
            raise HTTPException(
                404, f"no decision {decision_id} (unknown, or older than decisions.retention)"
            )
        decision, item = found
        explanation, source, error = explanations.explain(decision, item)
        return LookupOut(
            decision=decision_out(decision, show(who)),
            explanation=explanation,
            explanation_source=source,
            explanation_error=error,
            review_item=summary_out(item) if item is not None else None,
            reasons=reasons_of(decision, explanation) if reasons_of is not None else None,
        )

    console.add_routes(router)
    return router


def _decide_schema(max_reason: int) -> dict[str, Any]:
    schema = DecideIn.model_json_schema()
    schema["properties"]["reason"]["maxLength"] = max_reason
    return schema
