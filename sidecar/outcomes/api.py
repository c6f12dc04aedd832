"""POST /outcomes: ground truth for decisions, in batches, onto `sidecar.outcomes`.

Roles `outcome_writer` and `admin`. The body is `{"outcomes": [{decision_id,
outcome, observed_at}, ...]}` within `outcomes.max_body_bytes` and
`outcomes.max_batch_items` (413 past either, nothing emitted). Each item is
answered on its own: `accepted` (emitted; the lookup store has the decision),
`unknown_decision` (emitted all the same, `decision_known` false or null),
`duplicate` (the same outcome for the same decision earlier in this batch; not
emitted twice), `invalid` (not emitted, with `error`), or `not_recorded` (the
sink refused it: a gap record says so; post it again). Posting again is safe:
the event's id depends on the decision id only, so the event is emitted again
with the same `event_id` and consumers keep one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from sidecar.config import OutcomeSettings
from sidecar.control.auth import Authenticator, Principal
from sidecar.metrics import Registry
from sidecar.outcomes.rules import (
    FIELDS,
    MAX_DECISION_ID_CHARS,
    MAX_OUTCOME_CHARS,
    InvalidOutcome,
    Outcome,
    OutcomeRules,
    Seen,
)
from sidecar.sinks import EventSink
from sidecar.sinks.events import outcome_event, rfc3339

Status = Literal["accepted", "unknown_decision", "duplicate", "invalid", "not_recorded"]
STATUSES: tuple[Status, ...] = (
    "accepted",
    "unknown_decision",
    "duplicate",
    "invalid",
    "not_recorded",
)


class OutcomeResult(BaseModel):
    index: int
    decision_id: str | None
    status: Status
    decision_known: bool | None = None
    event_id: str | None = None
    error: str | None = None


class OutcomesOut(BaseModel):
    received_at: str
    counts: dict[Status, int]
    results: list[OutcomeResult]


class ErrorOut(BaseModel):
    detail: Any


async def _read_body(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "the body must be JSON (Content-Type: application/json)")
    too_large = f"the body is larger than {limit} bytes (outcomes.max_body_bytes)"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, too_large)
    return bytes(body)


def request_schema(max_items: int) -> dict[str, Any]:
    """The body's JSON Schema for the OpenAPI document (written out: no $refs to resolve)."""
    item = {
        "type": "object",
        "required": list(FIELDS),
        "additionalProperties": False,
        "properties": {
            "decision_id": {
                "type": "string",
                "maxLength": MAX_DECISION_ID_CHARS,
                "pattern": "^[!-~]+/[0-9]{1,9}$",
                "description": "<call id>/<row>, as the decision event carries it",
            },
            "outcome": {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_OUTCOME_CHARS},
                    {"type": "number"},
                ],
                "description": "A class label (one of model.class_labels when configured) or a number",
            },
            "observed_at": {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 with an offset",
            },
        },
    }
    return {
        "type": "object",
        "required": ["outcomes"],
        "additionalProperties": False,
        "properties": {"outcomes": {"type": "array", "maxItems": max_items, "items": item}},
    }


def _items(raw: bytes, max_items: int) -> list[Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("outcomes"), list):
        raise HTTPException(422, 'the body must be {"outcomes": [...]}')
    if set(doc) != {"outcomes"}:
        extra = sorted(k for k in doc if k != "outcomes")
        raise HTTPException(422, f"unknown field(s) {', '.join(extra)}")
    items: list[Any] = doc["outcomes"]
    if len(items) > max_items:
        raise HTTPException(
            413,
            f"{len(items)} outcomes in one body; at most {max_items} (outcomes.max_batch_items)",
        )
    return items


def publish_each(sink: EventSink, items: list[tuple[str, dict[str, Any]]]) -> list[bool]:
    """Outcome events, each answered: the control process's sink takes them in one crossing."""
    each = getattr(sink, "publish_each", None)
    if each is not None:
        taken: list[bool] = each("outcome", items)
        return taken
    return [sink.publish("outcome", key, body) for key, body in items]


def create_outcomes_router(
    *,
    settings: OutcomeSettings,
    authenticator: Authenticator,
    sink: EventSink,
    rules: OutcomeRules,
    known: Callable[[Sequence[str]], list[bool | None]],
    registry: Registry,
) -> APIRouter:
    router = APIRouter()
    writers = Depends(authenticator.require("outcome_writer", "admin"))
    counted = {
        s: registry.counter(
            "sidecar_outcomes_total", "Outcomes posted to POST /outcomes, by status", {"status": s}
        )
        for s in STATUSES
    }

    def answer(items: list[Any]) -> dict[str, Any]:
        received = rfc3339()
        seen = Seen()
        results: list[dict[str, Any]] = []
        checked: list[tuple[dict[str, Any], Outcome]] = []
        for i, item in enumerate(items):
            did = item.get("decision_id") if isinstance(item, dict) else None
            result: dict[str, Any] = {
                "index": i,
                "decision_id": did if isinstance(did, str) else None,
                "status": "invalid",
                "decision_known": None,
                "event_id": None,
                "error": None,
            }
            results.append(result)
            try:
                o = rules.check_item(item)
            except InvalidOutcome as exc:
                result["error"] = str(exc)
                continue
            check = seen.add(o)
            if check == "duplicate":
                result["status"] = "duplicate"
                continue
            if check == "conflict":
                result["error"] = "another outcome for this decision_id came earlier in this batch"
                continue
            checked.append((result, o))
        # The batch's questions and events go to the lookup store and the sink together:
        # from the control process each is one crossing of the bridge, not one per item.
        knowns = known([o.decision_id for _, o in checked])
        events: list[tuple[str, dict[str, Any]]] = []
        for (result, o), is_known in zip(checked, knowns, strict=True):
            body = outcome_event(
                decision_id=o.decision_id,
                outcome=o.outcome,
                observed_at=o.observed_at,
                received_at=received,
                source="api",
                decision_known=is_known,
            )
            result["decision_known"] = is_known
            result["event_id"] = body["event_id"]
            events.append((o.decision_id, body))
        # Each event's own answer: the reply says, per item, whether the sink took it.
        for (result, _), taken, is_known in zip(
            checked, publish_each(sink, events), knowns, strict=True
        ):
            if not taken:
                result["status"] = "not_recorded"
                result["error"] = "the event sink refused it (see the gap records); post it again"
            else:
                result["status"] = "accepted" if is_known else "unknown_decision"
        counts = dict.fromkeys(STATUSES, 0)
        for r in results:
            counts[r["status"]] += 1
        for s, n in counts.items():
            if n:
                counted[s].inc(n)
        return {"received_at": received, "counts": counts, "results": results}

    @router.post(
        "/outcomes",
        tags=["outcomes"],
        responses={
            200: {"model": OutcomesOut, "description": "Each item's status"},
            401: {"model": ErrorOut, "description": "Missing or unknown bearer token"},
            403: {"model": ErrorOut, "description": "Not an outcome_writer or admin"},
            413: {
                "model": ErrorOut,
                "description": "Over outcomes.max_body_bytes or outcomes.max_batch_items",
            },
            415: {"model": ErrorOut, "description": "Body must be application/json"},
            422: {"model": ErrorOut, "description": 'Not {"outcomes": [...]}'},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": request_schema(settings.max_batch_items)}
                },
            }
        },
    )
    async def post_outcomes(request: Request, who: Principal = writers) -> JSONResponse:
        """Ground truth for decisions: each item is checked, then emitted on `sidecar.outcomes`."""
        raw = await _read_body(request, settings.max_body_bytes)
        items = _items(raw, settings.max_batch_items)
        # Off the control plane's loop: the store lookups and the sink's writes.
        return JSONResponse(await run_in_threadpool(answer, items))

    return router
