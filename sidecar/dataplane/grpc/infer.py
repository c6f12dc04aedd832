"""ModelInfer and ModelStreamInfer through the frame tap: forwarded as they come, rows decided.

A ModelInfer stream's request DATA is collected as it goes up, its response
DATA as it comes back (gRPC's 5-byte length prefixes); both messages are read
into the V2 JSON shape once the response message is whole, and decided (the
transport-neutral Decider) after the read's bytes are written: the answer never
waits for its decision. The decision id is made when the request arrives, so it
goes back in the response's initial metadata (`x-decision-id`) even though the
decision is taken later. A call whose messages cannot be read still gets the id
(it then finds nothing; the parse failure is counted).

Request messages are held until whole only to look for `parameters[body_field]`
(group attributes; a byte search, the field name is on the wire as is): one
that has it is re-serialised without it, and the bytes the upstream never got
are given back to the client's windows (stream and connection WINDOW_UPDATE).

Where the answer depends on the decision the response is held until whole:
- hold mode (`review.mode = hold`): a ModelInfer call with a decision routed to
  review is answered ABORTED (not a model output, and not UNAVAILABLE, which
  clients may retry on their own and so re-run the model), details `held for
  human review: ticket T; status at URL`, with `x-review-status: held`,
  `x-review-ticket` and `x-decision-id` in the initial metadata. The model's
  answer is kept, as V2 JSON, for the review API. In a stream, a held answer is
  replaced by a message whose `error_message` says the same and whose
  `infer_response` is empty.
- `proxy.grpc_decision_id_in_parameters`: the id also goes in the message's
  `parameters["x-decision-id"]` (re-serialised, so longer).
The tap then owns that stream's flow control in the upstream-to-client
direction: the bytes it took from the upstream are given back to the upstream
when the message it sends is shorter, and when it is longer the difference is
kept off the client's next WINDOW_UPDATEs (TapConnection.owe), so the upstream's
view of the client's windows stays exact.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from sidecar.dataplane.decide import Decider
from sidecar.dataplane.grpc import frames as f
from sidecar.dataplane.grpc.grpc_predict_v2_pb2 import (
    ModelInferResponse,
    ModelStreamInferResponse,
)
from sidecar.dataplane.grpc.headerblock import Header, Headers
from sidecar.dataplane.grpc.tap import Stream, TapConnection
from sidecar.dataplane.grpc.tensors import (
    parse_request,
    parse_response,
    read_request,
    read_response,
    take_group_attributes,
)
from sidecar.dataplane.protocols import Call, ParseError, v2
from sidecar.decisions import Decision, new_call_id
from sidecar.pipeline.queue import Held, Pipeline

log = logging.getLogger("sidecar.dataplane.grpc")

SERVICE = "/inference.GRPCInferenceService/"
MODEL_INFER = SERVICE + "ModelInfer"
MODEL_STREAM_INFER = SERVICE + "ModelStreamInfer"
DECISION_ID = "x-decision-id"
_DECISION_ID = DECISION_ID.encode()
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
# Their bytes (a request is kept to be decided with its answer): past it the oldest are not
# recorded, as past MAX_PENDING; the newest is always kept (proxy.grpc_max_message_bytes).
MAX_PENDING_BYTES = 64 * 1024 * 1024
ABORTED = 10
UNAVAILABLE = 14
_HELD_HEADERS = [(b"content-type", b"application/json")]
OVERLOADED = (
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


@dataclass(slots=True)
class _Pending:
    """A request waiting for its answer: its bytes, read when first needed (off the
    forwarding path, unless it had group attributes to take out)."""

    raw: bytes
    arrived: float
    t0: float
    read: _Request | None = None


@dataclass(slots=True)
class InferState:
    """What the hooks keep for one ModelInfer / ModelStreamInfer stream."""

    unary: bool
    headers: list[tuple[bytes, bytes]]
    call_id: str
    # Request side: the message being assembled, client frames held until it is whole.
    req: bytearray = field(default_factory=bytearray)
    held: list[bytes] = field(default_factory=list)
    held_len: int = 0
    pending: deque[_Pending] = field(default_factory=deque)
    pending_bytes: int = 0
    # Response side: the bytes being assembled, what the upstream sent for them (held
    # mode), and the upstream's initial headers while they are held.
    resp: bytearray = field(default_factory=bytearray)
    taken: int = 0
    initial: list[Header] | None = None


def _take(st: InferState) -> _Pending | None:
    """The oldest request waiting for its answer, taken off (None: none waits)."""
    if not st.pending:
        return None
    entry = st.pending.popleft()
    st.pending_bytes -= len(entry.raw)
    return entry


def _messages(buf: bytearray) -> list[bytes]:
    """The whole gRPC messages at the front of `buf`, taken off it."""
    out = []
    while len(buf) >= 5:
        length = int.from_bytes(buf[1:5], "big")
        if len(buf) < 5 + length:
            break
        out.append(bytes(buf[5 : 5 + length]))
        del buf[: 5 + length]
    return out


def _framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class InferHooks:
    """The two inference RPCs' part of the listener's hooks; built once per service."""

    def __init__(
        self,
        decider: Decider,
        pipeline: Pipeline,
        *,
        decision_id_in_parameters: bool,
        body_field: str | None,
    ) -> None:
        self._decider = decider
        self._pipeline = pipeline
        self._id_in_parameters = decision_id_in_parameters
        self._body_field = body_field
        self._marker = body_field.encode() if body_field else None
        # Responses the answer depends on are held until whole.
        self.buffered = decision_id_in_parameters or decider.hold
        self._calls: dict[tuple[str, str], Call] = {}
        # Decisions to take once the current read's bytes are written.
        # (state, request for a unary call, response message, latency or arrival time)
        self.work: list[tuple[InferState, _Pending | None, bytes, float]] = []
        # Requests of one stream waiting for their answer (an attribute so tests can lower it).
        self.max_pending = MAX_PENDING
        self.max_pending_bytes = MAX_PENDING_BYTES

    # The request ---------------------------------------------------------------------

    def request(self, s: Stream, received: Headers) -> tuple[int, str] | None:
        unary = s.method == MODEL_INFER
        if unary and not self._pipeline.admits():
            return UNAVAILABLE, OVERLOADED
        s.infer = InferState(unary, list(received), new_call_id() if unary else "")
        return None

    def client_data(self, conn: TapConnection, s: Stream, frame: bytes, body: bytes) -> None:
        """Collects the request; forwards the held frames once no message is part-way."""
        st: InferState = s.infer
        st.req += body
        st.held.append(frame)
        st.held_len += len(frame) - 9
        messages = _messages(st.req)
        if st.req:
            return  # part of a message still to come: its frames wait with it
        held, st.held = st.held, []
        taken, st.held_len = st.held_len, 0
        now = perf_counter()
        arrived = wall_clock()
        marker = self._marker
        changed = False
        new: list[_Pending] = []
        pending = st.pending
        for m in messages:
            while pending and (
                len(pending) >= self.max_pending
                or st.pending_bytes + len(m) > self.max_pending_bytes
            ):
                st.pending_bytes -= len(pending.popleft().raw)
                self._decider.parse_failed(v2.NAME, "stream_unanswered")
            entry = _Pending(m, arrived, now)
            if marker is not None and marker in m:
                entry.read = self._read(m)
                changed = changed or entry.read.body is not m
            pending.append(entry)
            st.pending_bytes += len(m)
            new.append(entry)
        if not changed:
            conn.to_upstream.extend(held)
            return
        payload = b"".join(_framed(self._resolve(p).body) for p in new)
        end = bool(f.HEAD.unpack_from(held[-1])[3] & f.END_STREAM)
        conn.to_upstream.append(f.data_frames(s.sid, payload, end))
        given_back = taken - len(payload)
        if given_back > 0:
            conn.to_client.append(f.window_update(0, given_back))
            if not s.client_done:
                conn.to_client.append(f.window_update(s.sid, given_back))

    def _resolve(self, p: _Pending) -> _Request:
        if p.read is None:
            p.read = self._read(p.raw)
        return p.read

    def _read(self, data: bytes) -> _Request:
        """The request read into the V2 shape; the bytes to forward are the client's
        unless group attributes had to be taken out of its parameters."""
        try:
            message = parse_request(data)
            groups = None
            if self._marker is not None and self._marker in data:
                assert self._body_field is not None
                groups = take_group_attributes(message, self._body_field)
                if groups is not None:
                    data = message.SerializeToString()
            call = self._call(message.model_name, message.model_version)
            return _Request(call, read_request(message), groups, data)
        except (ParseError, ValueError, TypeError) as exc:
            self._decider.parse_failed(v2.NAME, "request_protobuf")
            log.debug("could not read a ModelInferRequest: %s", exc)
            return _Request(None, None, None, data)

    def _call(self, model: str, version: str) -> Call:
        key = (model, version)
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) >= 256:
                # Bounded: a client naming ever new models cannot grow it.
                self._calls.clear()
            call = self._calls[key] = Call(v2.NAME, model, version or None, v2.parse)
        return call

    # The response --------------------------------------------------------------------

    def response_headers(self, conn: TapConnection, s: Stream, headers: list[Header]) -> bool:
        st: InferState = s.infer
        if not st.unary:
            return True
        if self.buffered:
            st.initial = headers
            return False
        headers.append((_DECISION_ID, st.call_id.encode()))
        return True

    def trailers(self, conn: TapConnection, s: Stream) -> None:
        """The upstream's trailers: headers still held go first (an answer without a message)."""
        st: InferState = s.infer
        if st.initial is not None:
            initial, st.initial = st.initial, None
            conn.send_headers(s, initial, False)

    def upstream_data(self, conn: TapConnection, s: Stream, frame: bytes, body: bytes) -> bool:
        st: InferState = s.infer
        st.resp += body
        if not self.buffered:
            messages = _messages(st.resp)
            now = perf_counter()
            for m in messages:
                if st.unary:
                    entry = _take(st)
                    if entry is not None:
                        self.work.append((st, entry, m, now - entry.t0))
                else:
                    self.work.append((st, None, m, now))
            return True
        st.taken += len(frame) - 9
        messages = _messages(st.resp)
        if not messages:
            return False
        # (A frame that ends one message and starts the next is charged to the first.)
        taken, st.taken = st.taken, 0
        out: list[bytes] = []
        for m in messages:
            answer = self._answer_held(conn, s, st, m)
            if answer is None:
                # Held: the client is answered; the bytes it never gets go back upstream.
                if taken:
                    conn.to_upstream.append(f.window_update(0, taken))
                return False
            out.append(_framed(answer))
        payload = b"".join(out)
        end = bool(f.HEAD.unpack_from(frame)[3] & f.END_STREAM)
        conn.to_client.append(f.data_frames(s.sid, payload, end))
        diff = taken - len(payload)
        if diff > 0:
            conn.to_upstream.append(f.window_update(0, diff))
            conn.to_upstream.append(f.window_update(s.sid, diff))
        elif diff < 0:
            conn.owe(s.sid, -diff)
        return False

    def _answer_held(
        self, conn: TapConnection, s: Stream, st: InferState, message: bytes
    ) -> bytes | None:
        """The message to send for one upstream message when the answer waits for the
        decision; None when the call was held (answered ABORTED here)."""
        if not st.unary:
            return self._stream_answer(message, st)
        entry = _take(st)
        initial, st.initial = st.initial or [], None
        if entry is None:
            conn.send_headers(s, initial, False)
            return message
        batch, answer = self._decide(st, entry, message, perf_counter() - entry.t0)
        if batch is None:
            conn.send_headers(s, initial, False)
            return message
        reviewed = [d for d in batch.decisions if d.review is not None]
        if reviewed and self._decider.hold:
            batch.held = Held(200, _HELD_HEADERS, orjson.dumps(answer))
            if self._pipeline.submit(batch, urgent=True):
                held = reviewed[0]
                conn.send_headers(
                    s,
                    [
                        (b":status", b"200"),
                        (b"content-type", b"application/grpc"),
                        (b"x-review-status", b"held"),
                        (b"x-review-ticket", held.decision_id.encode()),
                        (_DECISION_ID, st.call_id.encode()),
                    ],
                    False,
                )
                conn.answer(s, ABORTED, self._ticket(held))
                return None
            # Shed (the gap record names it): a ticket for it would answer 404.
            conn.send_headers(s, initial, False)
            return message
        self._pipeline.submit(batch)
        initial.append((_DECISION_ID, st.call_id.encode()))
        conn.send_headers(s, initial, False)
        if not self._id_in_parameters:
            return message
        response = parse_response(message)
        response.parameters[DECISION_ID].string_param = st.call_id
        changed: bytes = response.SerializeToString()
        return changed

    def _decide(
        self, st: InferState, entry: _Pending, message: bytes, latency: float
    ) -> tuple[Any, dict[str, Any] | None]:
        req = self._resolve(entry)
        if req.parsed is None or req.call is None:
            return None, None
        answer = self._answer(message)
        if answer is None:
            return None, None
        batch = self._decider.decide_parsed(
            req.call, req.parsed, answer, st.headers, latency, entry.arrived, req.groups, st.call_id
        )
        return batch, answer

    def after_flush(self) -> None:
        """The decisions of the answers just forwarded (those not held for them)."""
        work, self.work = self.work, []
        for st, entry, message, t in work:
            if entry is not None:
                batch, _ = self._decide(st, entry, message, t)
                if batch is not None:
                    self._pipeline.submit(batch)
            else:
                self._stream_answer(message, st, t)

    def done(self, s: Stream) -> None:
        """A unary call over without an answer to decide: its request is still read, so an
        unreadable one is counted."""
        st: InferState = s.infer
        if st.unary:
            for entry in st.pending:
                self._resolve(entry)

    def _answer(self, data: bytes | ModelInferResponse) -> dict[str, Any] | None:
        try:
            message = parse_response(data) if isinstance(data, bytes) else data
            return read_response(message)
        except (ParseError, ValueError, TypeError) as exc:
            self._decider.parse_failed(v2.NAME, "response_protobuf")
            log.debug("could not read a ModelInferResponse: %s", exc)
            return None

    def _ticket(self, held: Decision) -> str:
        ticket = orjson.loads(self._decider.hold_ticket(held))
        return f"held for human review: ticket {ticket['review_ticket']}; status at {ticket['status_url']}"

    # Streams -------------------------------------------------------------------------

    def _match(self, st: InferState, answer_id: str) -> _Pending | None:
        """The request an answer belongs to, taken off `st.pending`: by id, else the oldest."""
        if not answer_id:
            return _take(st)
        pending = st.pending
        for i, entry in enumerate(pending):
            parsed = self._resolve(entry).parsed
            if parsed is not None and parsed["id"] == answer_id:
                del pending[i]
                st.pending_bytes -= len(entry.raw)
                return entry
        # Its request is no longer waiting (given up on, or answered already): pairing the
        # answer with another request would record a wrong decision.
        self._decider.parse_failed(v2.NAME, "stream_unmatched")
        return None

    def _stream_answer(self, data: bytes, st: InferState, now: float | None = None) -> bytes:
        """Decides one upstream stream message; the message to send back for it (its bytes,
        unless held or the decision id goes in its parameters)."""
        try:
            message = ModelStreamInferResponse.FromString(data)
        except DecodeError:
            self._decider.parse_failed(v2.NAME, "response_protobuf")
            return data
        if not st.pending:
            return data
        answered = message.HasField("infer_response")
        entry = self._match(st, message.infer_response.id if answered else "")
        if entry is None or not answered or message.error_message:
            # An error answers its request too (it is no longer waiting), but is no decision.
            return data
        req = self._resolve(entry)
        answer = self._answer(message.infer_response)
        if answer is None or req.call is None or req.parsed is None:
            return data
        latency = (now if now is not None else perf_counter()) - entry.t0
        batch = self._decider.decide_parsed(
            req.call, req.parsed, answer, st.headers, latency, entry.arrived, req.groups
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
