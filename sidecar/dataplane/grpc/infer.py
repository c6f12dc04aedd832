"""ModelInfer and ModelStreamInfer: forwarded like any RPC, and their rows become decisions.

The request path of `model_infer` reads top to bottom: receive, forward the
client's bytes, read both messages into the V2 JSON shape, decide (the
transport-neutral Decider), enqueue, answer. The answer is the upstream's
bytes, with `x-decision-id` (and `x-review-status: queued` when routed to
review) added to its initial metadata; only with
`proxy.grpc_decision_id_in_parameters` is the message itself changed (the
id in `parameters["x-decision-id"]`, re-serialised).

Hold mode: a call with a decision routed to review is answered ABORTED (not a
model output, and not UNAVAILABLE, which clients may retry on their own and
so re-run the model), details `held for human review: ticket T; status at URL`,
with `x-review-status: held`, `x-review-ticket` and `x-decision-id` in the
initial metadata. The model's answer is kept, as V2 JSON, for the review API.
In a stream, a held answer is replaced by a message whose `error_message`
says the same and whose `infer_response` is empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from google.protobuf.message import DecodeError
from grpc.aio import AioRpcError

from sidecar.dataplane.decide import Decider
from sidecar.dataplane.grpc.forward import (
    Context,
    Forwarder,
    check_status,
    end_to_end,
    pump_requests,
    raw_headers,
)
from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import (
    ModelInferResponse,
    ModelStreamInferResponse,
)
from sidecar.dataplane.grpc.tensors import (
    parse_request,
    parse_response,
    read_request,
    read_response,
    take_group_attributes,
)
from sidecar.dataplane.protocols import Call, ParseError, v2
from sidecar.decisions import Decision
from sidecar.pipeline.queue import Held, Pipeline

log = logging.getLogger("sidecar.dataplane.grpc")

SERVICE = "/inference.GRPCInferenceService/"
MODEL_INFER = SERVICE + "ModelInfer"
MODEL_STREAM_INFER = SERVICE + "ModelStreamInfer"
DECISION_ID = "x-decision-id"
# The protocol's unary methods (Triton's included): a call gets at most proxy.timeout_s.
UNARY_METHODS = frozenset(
    SERVICE + m
    for m in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "TraceSetting",
        "LogSettings",
        "ModelInfer",
    )
)
# Requests of one stream still waiting for their answer; past it the oldest is not recorded.
MAX_PENDING = 1024
_HELD_HEADERS = [(b"content-type", b"application/json")]
_OVERLOADED = (
    "overloaded: the sidecar cannot record decisions now; the call was not forwarded "
    "(decisions.on_overload = reject)"
)
perf_counter = time.perf_counter
wall_clock = time.time


@dataclass(slots=True)
class _Request:
    """A request read for deciding: its V2 shape, its body's group attributes, the bytes to forward."""

    call: Call | None
    parsed: dict[str, Any] | None
    groups: Any
    body: bytes


class InferHandlers:
    """The two inference RPCs, deciding through the Decider; built once per service."""

    def __init__(
        self,
        forwarder: Forwarder,
        decider: Decider,
        pipeline: Pipeline,
        *,
        decision_id_in_parameters: bool,
        body_field: str | None,
    ) -> None:
        self._fwd = forwarder
        self._decider = decider
        self._pipeline = pipeline
        self._id_in_parameters = decision_id_in_parameters
        self._body_field = body_field
        self._calls: dict[tuple[str, str], Call] = {}
        # Requests of one stream waiting for their answer (an attribute so tests can lower it).
        self.max_pending = MAX_PENDING

    def _call(self, model: str, version: str) -> Call:
        key = (model, version)
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) >= 256:
                # Bounded: a client naming ever new models cannot grow it.
                self._calls.clear()
            call = self._calls[key] = Call(v2.NAME, model, version or None, v2.parse)
        return call

    def _read(self, data: bytes) -> _Request:
        """The request read into the V2 shape; the bytes to forward are the client's
        unless group attributes had to be taken out of its parameters."""
        try:
            message = parse_request(data)
            groups = None
            if self._body_field is not None:
                groups = take_group_attributes(message, self._body_field)
                if groups is not None:
                    data = message.SerializeToString()
            call = self._call(message.model_name, message.model_version)
            return _Request(call, read_request(message), groups, data)
        except (ParseError, ValueError, TypeError) as exc:
            self._decider.parse_failed(v2.NAME, "request_protobuf")
            log.debug("could not read a ModelInferRequest: %s", exc)
            return _Request(None, None, None, data)

    def _answer(self, data: bytes | ModelInferResponse) -> dict[str, Any] | None:
        try:
            message = parse_response(data) if isinstance(data, bytes) else data
            return read_response(message)
        except (ParseError, ValueError, TypeError) as exc:
            self._decider.parse_failed(v2.NAME, "response_protobuf")
            log.debug("could not read a ModelInferResponse: %s", exc)
            return None

    async def model_infer(self, request: bytes, context: Context) -> bytes:
        arrived = wall_clock()
        if not self._pipeline.admits():
            await context.abort(grpc.StatusCode.UNAVAILABLE, _OVERLOADED)
        req = self._read(request)
        fwd = self._fwd
        t0 = perf_counter()
        try:
            response, initial, trailing = await fwd.unary(MODEL_INFER, req.body, context)
        except AioRpcError as err:
            await fwd.fail(context, err)
            raise
        latency = perf_counter() - t0
        headers = end_to_end(initial)
        context.set_trailing_metadata(end_to_end(trailing))
        batch = None
        if req.parsed is not None and req.call is not None:
            answer = self._answer(response)
            if answer is not None:
                batch = self._decider.decide_parsed(
                    req.call,
                    req.parsed,
                    answer,
                    raw_headers(context.invocation_metadata()),
                    latency,
                    arrived,
                    req.groups,
                )
        if batch is None:
            await context.send_initial_metadata(headers)
            return response
        rid = batch.decisions[0].call_id
        reviewed = [d for d in batch.decisions if d.review is not None]
        if reviewed and self._decider.hold:
            batch.held = Held(200, _HELD_HEADERS, orjson.dumps(answer))
            if self._pipeline.submit(batch, urgent=True):
                await self._hold(context, rid, reviewed[0])  # raises: the call ends ABORTED
            # Shed (the gap record names it): a ticket for it would answer 404.
            await context.send_initial_metadata(headers)
            return response
        self._pipeline.submit(batch)
        if reviewed:
            headers.append(("x-review-status", "queued"))
        headers.append((DECISION_ID, rid))
        await context.send_initial_metadata(headers)
        if self._id_in_parameters:
            message = parse_response(response)
            message.parameters[DECISION_ID].string_param = rid
            changed: bytes = message.SerializeToString()
            return changed
        return response

    def _ticket(self, held: Decision) -> str:
        ticket = orjson.loads(self._decider.hold_ticket(held))
        return f"held for human review: ticket {ticket['review_ticket']}; status at {ticket['status_url']}"

    async def _hold(self, context: Context, rid: str, held: Decision) -> None:
        await context.send_initial_metadata(
            [
                ("x-review-status", "held"),
                ("x-review-ticket", held.decision_id),
                (DECISION_ID, rid),
            ]
        )
        await context.abort(grpc.StatusCode.ABORTED, self._ticket(held))

    def _match(
        self, pending: deque[tuple[_Request, float, float]], answer_id: str
    ) -> tuple[_Request, float, float] | None:
        """The request an answer belongs to, taken off `pending`: by id, else the oldest."""
        if not answer_id:
            return pending.popleft()
        for i, entry in enumerate(pending):
            parsed = entry[0].parsed
            if parsed is not None and parsed["id"] == answer_id:
                del pending[i]
                return entry
        # Its request is no longer waiting (given up on, or answered already): pairing the
        # answer with another request would record a wrong decision.
        self._decider.parse_failed(v2.NAME, "stream_unmatched")
        return None

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Context) -> None:
        """Each request message is matched with its answer (by `id`, else in order) and decided."""
        fwd = self._fwd
        call = fwd.open_stream(MODEL_STREAM_INFER, context)
        pending: deque[tuple[_Request, float, float]] = deque()
        headers = raw_headers(context.invocation_metadata())

        async def forwarded() -> AsyncIterator[bytes]:
            async for data in requests:
                req = self._read(data)
                # Unreadable ones too: answers without an id are matched in order.
                if len(pending) >= self.max_pending:
                    pending.popleft()
                    self._decider.parse_failed(v2.NAME, "stream_unanswered")
                pending.append((req, wall_clock(), perf_counter()))
                yield req.body

        pump = asyncio.ensure_future(pump_requests(forwarded(), call))
        sent = False
        try:
            await context.send_initial_metadata(end_to_end(await call.initial_metadata()))
            sent = True
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                await context.write(self._stream_answer(message, pending, headers))
            await check_status(call)
            context.set_trailing_metadata(end_to_end(await call.trailing_metadata()))
        except AioRpcError as err:
            await fwd.fail(context, err, sent)
        finally:
            pump.cancel()
            call.cancel()

    def _stream_answer(
        self,
        data: bytes,
        pending: deque[tuple[_Request, float, float]],
        headers: list[tuple[bytes, bytes]],
    ) -> bytes:
        """The message to send back for one upstream stream message (its bytes, unless held
        or the decision id goes in its parameters)."""
        try:
            message = ModelStreamInferResponse.FromString(data)
        except DecodeError:
            self._decider.parse_failed(v2.NAME, "response_protobuf")
            return data
        if not pending:
            return data
        answered = message.HasField("infer_response")
        entry = self._match(pending, message.infer_response.id if answered else "")
        if entry is None or not answered or message.error_message:
            # An error answers its request too (it is no longer waiting), but is no decision.
            return data
        req, arrived, t0 = entry
        answer = self._answer(message.infer_response)
        if answer is None or req.call is None or req.parsed is None:
            return data
        batch = self._decider.decide_parsed(
            req.call, req.parsed, answer, headers, perf_counter() - t0, arrived, req.groups
        )
        if batch is None:
            return data
        rid = batch.decisions[0].call_id
        reviewed = [d for d in batch.decisions if d.review is not None]
        if reviewed and self._decider.hold:
            batch.held = Held(200, _HELD_HEADERS, orjson.dumps(answer))
            if self._pipeline.submit(batch, urgent=True):
                held: bytes = ModelStreamInferResponse(
                    error_message=self._ticket(reviewed[0])
                ).SerializeToString()
                return held
            return data
        self._pipeline.submit(batch)
        if not self._id_in_parameters:
            return data
        message.infer_response.parameters[DECISION_ID].string_param = rid
        changed: bytes = message.SerializeToString()
        return changed
