"""`GET /decisions/{id}` at the hub: the decision, its explanation and its review state in one statement.

The control plane's lookup (`sidecar.control.lookup.Explanations`) asks its
stores one thing at a time: the review item, the decision, then the
explanation, three round trips to the database at the hub. Here one
statement reads all three, with the same answer shapes, roles and sources:

- the decision, from the daily partitions within `ID_WINDOW_S` of the time
  its UUIDv7 carries (`sidecar.hub.lookup.id_time`);
- its review item (a left join: the item exists once its decision has arrived);
- its newest sampled explanation, or else one computed on demand earlier by
  any hub (a lateral subquery, from the partitions after the window opens:
  an explanation is made after its decision).

Only what the statement cannot answer costs more: an item whose lease
lapsed (the store expires it and reads it again) and a decision with no
explanation stored (computed now by `explain_now`, as on a sidecar).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from sidecar.control.auth import Authenticator, Principal, Role
from sidecar.control.lookup import Explanations, Source
from sidecar.hub.db import AsyncConn, Conn
from sidecar.hub.lookup import ID_WINDOW_S, decision_dict, id_time
from sidecar.hub.review import ITEM_STATE_COLUMNS, ITEM_STATE_WIDTH, HubReviewStore, item_with
from sidecar.review.api import ReasonsFn, RequestId, refuse_unknown_query
from sidecar.review.model import ReviewItem, normalise_item_id
from sidecar.review.schemas import ErrorOut, LookupOut, decision_out, summary_out

# The decision's columns, the item's (all NULL without one), then the explanation's.
_COLUMNS = (
    "SELECT d.body, extract(epoch FROM d.time)::float8, "
    f"{ITEM_STATE_COLUMNS}, x.body, x.on_demand"
    " FROM decisions d LEFT JOIN review_items i ON i.item_id = d.decision_id"
    " LEFT JOIN LATERAL (SELECT e.body,"
    " e.body::json->>'source' IS NOT DISTINCT FROM 'on_demand' AS on_demand"
    " FROM explanations e WHERE e.decision_id = %(id)s{since}"
    # Sampled first (false sorts before true), then the newest.
    " ORDER BY 2, e.time DESC LIMIT 1) x ON true"
    " WHERE d.decision_id = %(id)s{window} LIMIT 1"
)
ONE_STATEMENT = _COLUMNS.format(
    since=" AND e.time >= to_timestamp(%(lo)s)",
    window=" AND d.time >= to_timestamp(%(lo)s) AND d.time < to_timestamp(%(hi)s)",
)
# For ids that carry no time (not minted by a sidecar): every partition.
ONE_STATEMENT_UNBOUNDED = _COLUMNS.format(since="", window="")
_BOUNDED, _UNBOUNDED = ONE_STATEMENT.encode(), ONE_STATEMENT_UNBOUNDED.encode()

# Who may look a decision up (the route, and `sidecar.hub.lookup_fast` in front of it).
LOOKUP_ROLES: tuple[Role, ...] = ("reviewer", "auditor", "admin")

# The row: decision body, epoch, the item's columns, explanation body, on_demand.
_ITEM = slice(2, 2 + ITEM_STATE_WIDTH)
_EXPLANATION = 2 + ITEM_STATE_WIDTH


class Found:
    """One lookup's row, read."""

    __slots__ = ("decision", "explanation", "item", "source")

    def __init__(
        self,
        decision: dict[str, Any],
        item: ReviewItem | None,
        explanation: dict[str, Any] | None,
        source: Source | None,
    ) -> None:
        self.decision = decision
        self.item = item
        self.explanation = explanation
        self.source = source


def statement(decision_id: str) -> tuple[bytes, dict[str, str | float]]:
    """The one statement for `decision_id` and its parameters."""
    key = normalise_item_id(decision_id)
    at = id_time(key)
    if at is None:
        return _UNBOUNDED, {"id": key}
    return _BOUNDED, {"id": key, "lo": at - ID_WINDOW_S, "hi": at + ID_WINDOW_S}


def read(row: tuple[Any, ...] | None) -> Found | None:
    """The statement's row, read (None: no such decision)."""
    if row is None:
        return None
    decision = decision_dict(row[0], float(row[1]))
    state = row[_ITEM]
    item = None if state[0] is None else item_with(state, decision)
    explanation: dict[str, Any] | None = (
        None if row[_EXPLANATION] is None else orjson.loads(row[_EXPLANATION])
    )
    source: Source | None = None
    if explanation is not None:
        source = "on_demand" if row[_EXPLANATION + 1] else "sampled"
    return Found(decision, item, explanation, source)


def find(pool: ConnectionPool[Conn], decision_id: str) -> Found | None:
    """The decision, its review item and its stored explanation, in one statement."""
    sql, args = statement(decision_id)
    with pool.connection() as conn:
        row = conn.execute(sql, args).fetchone()
    return read(row)


async def find_async(pool: AsyncConnectionPool[AsyncConn], decision_id: str) -> Found | None:
    """`find` on the event loop, over the pool of `sidecar.hub.db.async_pool`."""
    sql, args = statement(decision_id)
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, args)
        row = await cursor.fetchone()
    return read(row)


class Lookup:
    """The lookup both the route and `sidecar.hub.lookup_fast` answer with.

    Called, it blocks (run it off the loop); a decision it cannot find raises the route's 404.
    `answer` completes a `find`'s result, and `blocks` says whether that completion may wait
    on the database or on an explainer: most do not (a sampled explanation, none to compute),
    and the fast path answers those on the loop without a hop to a thread.
    `explanations` (the lookup the review and people routes share, one cache) explains what
    has no stored explanation, past the sampled one the statement already looked for, when
    `explains` (an explainer is configured); `reasons_of` adds the principal reasons, as on a
    sidecar.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        pool: ConnectionPool[Conn],
        store: HubReviewStore,
        explanations: Explanations,
        reasons_of: ReasonsFn | None = None,
        *,
        explains: bool = True,
    ) -> None:
        self._authenticator = authenticator
        self._pool = pool
        self._store = store
        self._explanations = explanations
        self._reasons_of = reasons_of
        self._explains = explains

    def __call__(self, decision_id: str, who: Principal) -> LookupOut:
        return self.answer(decision_id, find(self._pool, decision_id), who)

    def _lapsed(self, item: ReviewItem | None) -> bool:
        return (
            item is not None
            and item.status == "claimed"
            and (item.lease_expires or 0) <= self._store.now()
        )

    def blocks(self, found: Found | None) -> bool:
        """Whether `answer(found)` may block: it reads the store again, or explains now."""
        if found is None:
            return False
        if self._lapsed(found.item):
            return True
        if found.explanation is not None:
            return False
        item = found.item
        return self._explains and (item is None or item.explanation is None)

    def answer(
        self, decision_id: str, found: Found | None, who: Principal, *, reread: bool = True
    ) -> LookupOut:
        """The answer for `find(decision_id)`'s result (blocking where `blocks` says so).

        `reread=False`: `blocks` said no, so a lease is not checked again here. One that
        lapsed in the microseconds since would read the store, on the caller's event loop;
        the item is shown as found, claimed, as it was when the statement ran.
        """
        if found is None:
            raise HTTPException(
                404, f"no decision {decision_id} (unknown, or older than hub.retention_days)"
            )
        item = found.item
        if item is not None and reread and self._lapsed(item):
            # The lease lapsed and housekeeping has not returned it yet: the store does.
            item = self._store.get(item.item_id)
        explanation, source, error = found.explanation, found.source, None
        # As on a sidecar: sampled, then the review item's own, then on demand.
        if source != "sampled" and item is not None and item.explanation is not None:
            explanation, source = item.explanation, "review_item"
        elif explanation is None:
            explanation, source, error = self._explanations.explain_unsampled(found.decision, item)
        show = self._authenticator.sees_group_attributes(who)
        reasons_of = self._reasons_of
        return LookupOut(
            decision=decision_out(found.decision, show),
            explanation=explanation,
            explanation_source=source,
            explanation_error=error,
            review_item=summary_out(item) if item is not None else None,
            reasons=reasons_of(found.decision, explanation) if reasons_of is not None else None,
        )


def create_lookup_router(
    authenticator: Authenticator, lookup: Callable[[str, Principal], LookupOut]
) -> APIRouter:
    """GET /decisions/{id} and /decisions/{id}/{row}, answered by `lookup` (a `Lookup`, which
    `sidecar.hub.lookup_fast` answers the plain case with too)."""
    router = APIRouter(dependencies=[Depends(refuse_unknown_query)])
    anyone = Depends(authenticator.require(*LOOKUP_ROLES))
    codes = {401: "Missing or unknown bearer token", 403: "Role forbids", 404: "No such decision"}
    responses: dict[int | str, dict[str, Any]] = {
        c: {"model": ErrorOut, "description": d} for c, d in codes.items()
    }
    responses[422] = {"model": ErrorOut, "description": "Invalid parameters"}

    @router.get("/decisions/{request_id}", tags=["decisions"], responses=responses)
    async def lookup_first_row(request_id: RequestId, who: Principal = anyone) -> LookupOut:
        """A decision (row 0 of the request) and why it was made."""
        return await run_in_threadpool(lookup, f"{request_id}/0", who)

    # `{row:int}`: only digits reach this route, so `/decisions/{id}/reasons` and the like
    # go on to the routes that own them, whatever order the routers were added in.
    @router.get("/decisions/{request_id}/{row:int}", tags=["decisions"], responses=responses)
    async def lookup_row(
        request_id: RequestId,
        row: Annotated[int, Path(ge=0, le=1_000_000, description="The row within the request")],
        who: Principal = anyone,
    ) -> LookupOut:
        """A decision and why it was made: its explanation, computed now if none is stored."""
        return await run_in_threadpool(lookup, f"{request_id}/{row}", who)

    return router
