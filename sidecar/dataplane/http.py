"""The data plane: forwards everything, and records inference calls as decisions.

The request path reads top to bottom in `handle` and `_inference`:
receive, forward, parse, decide, enqueue, return. Nothing on it waits for
explanation, Kafka or disk; those happen behind `Pipeline.submit`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import orjson

from sidecar.dataplane.errors import UpstreamError
from sidecar.dataplane.headers import response_headers
from sidecar.dataplane.protocols import Call, ParseError, recognise
from sidecar.dataplane.server import ClientGone, Exchange
from sidecar.dataplane.upstream import Upstream
from sidecar.decisions import Decision, accept_request_id
from sidecar.metrics import Registry
from sidecar.pipeline.queue import Batch, Held, Pipeline
from sidecar.types import RawHeaders

log = logging.getLogger("sidecar.dataplane.http")

_JSON = (b"content-type", b"application/json")
_TRUE = frozenset({b"1", b"true", b"yes", b"on"})
_CALL_CACHE = 256
perf_counter = time.perf_counter
wall_clock = time.time


class GroupSource(Protocol):
    """Where group attributes come from (sidecar.dataplane.groups)."""

    @property
    def header_name(self) -> bytes: ...
    @property
    def body_field(self) -> str | None: ...
    @property
    def derives(self) -> bool: ...

    def from_request(
        self, headers: RawHeaders, body_groups: Any, features: dict[str, Any] | None
    ) -> dict[str, str]: ...


class Router(Protocol):
    """Review routing rules (sidecar.pipeline.routing)."""

    @property
    def mode(self) -> str: ...
    @property
    def header_name(self) -> bytes: ...

    def route(self, decision: Decision, review_requested: bool) -> str | None: ...


class DataPlane:
    def __init__(
        self,
        *,
        upstream: Upstream,
        pipeline: Pipeline,
        registry: Registry,
        max_body: int,
        max_rows: int,
        mlflow_model: str,
        model_version: str | None,
        feature_names: list[str],
        class_labels: list[str],
        groups: GroupSource | None = None,
        router: Router | None = None,
        explain_header: bytes | None = b"x-explain",
        control_url: str = "",
    ) -> None:
        self._upstream = upstream
        self._pipeline = pipeline
        self._max_body = max_body
        self._max_rows = max_rows
        self._mlflow_model = mlflow_model
        self._model_version = model_version
        self._feature_names = feature_names
        self._labels = class_labels
        self._groups = groups
        self._router = router
        self._explain_header = explain_header
        self._review_header = router.header_name if router is not None else None
        self._hold = router is not None and router.mode == "hold"
        self._control_url = control_url.rstrip("/")
        self._strip = frozenset({groups.header_name}) if groups is not None else frozenset()
        self._too_large = orjson.dumps(
            {
                "error": "payload too large",
                "detail": f"inference request bodies are buffered up to {max_body} bytes "
                "(config key proxy.max_inference_body_bytes)",
            }
        )
        r = registry
        self._requests = {
            kind: r.counter("sidecar_requests_total", "Requests received", {"kind": kind})
            for kind in ("inference", "passthrough")
        }
        self._upstream_latency = r.histogram(
            "sidecar_upstream_latency_seconds", "Time from forwarding to the upstream's full answer"
        )
        self._upstream_errors = {
            code: r.counter(
                "sidecar_upstream_errors_total", "Upstream failures", {"status": str(code)}
            )
            for code in (502, 504)
        }
        self._calls: dict[tuple[str, str], Call | None] = {}
        self._parse_failures: dict[str, Any] = {}
        self._registry = r
        # Registered up front so dashboards see zeros, not a missing series.
        for protocol in ("kserve_v1", "v2", "mlflow"):
            for reason in ("request_json", "response_json", "ParseError"):
                self._parse_failed(protocol, reason, 0)
        self._too_large_count = r.counter(
            "sidecar_request_too_large_total", "Inference calls refused with 413"
        )
        self._rows_skipped = r.counter(
            "sidecar_rows_not_recorded_total", "Rows past proxy.max_rows_per_request"
        )
        self._disconnects = r.counter(
            "sidecar_client_disconnects_total", "Calls cancelled because the client went away"
        )

    def _parse_failed(self, protocol: str, reason: str, n: int = 1) -> None:
        key = f"{protocol}:{reason}"
        c = self._parse_failures.get(key)
        if c is None:
            c = self._registry.counter(
                "sidecar_parse_failures_total",
                "Recognised calls whose bodies could not be understood (still forwarded)",
                {"protocol": protocol, "reason": reason},
            )
            self._parse_failures[key] = c
        c.inc(n)

    def _recognise(self, method: str, path: str) -> Call | None:
        # Clients call the same few paths over and over; the cache is cleared when full
        # so a scan of random paths cannot grow it.
        key = (method, path)
        try:
            return self._calls[key]
        except KeyError:
            pass
        call = recognise(method, path, self._mlflow_model)
        if len(self._calls) >= _CALL_CACHE:
            self._calls.clear()
        self._calls[key] = call
        return call

    async def handle(self, ex: Exchange) -> None:
        call = self._recognise(ex.method, ex.path)
        try:
            if call is None:
                self._requests["passthrough"].inc()
                await self._stream(ex)
            else:
                self._requests["inference"].inc()
                await self._inference(ex, call)
        except (asyncio.CancelledError, ClientGone):
            self._disconnects.inc()
            raise

    def _error(self, ex: Exchange, err: UpstreamError) -> None:
        self._upstream_errors[err.status].inc()
        ex.respond(err.status, [_JSON], err.body())

    async def _inference(self, ex: Exchange, call: Call) -> None:
        arrived = wall_clock()
        body = await ex.read_all(self._max_body)
        if body is None:
            self._too_large_count.inc()
            ex.keep_alive = False
            ex.respond(413, [_JSON], self._too_large)
            return
        try:
            request: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
            self._parse_failed(call.protocol, "request_json")
        body_groups, body = self._take_body_groups(request, body)

        t0 = perf_counter()
        try:
            answer = await self._upstream.buffered(
                ex.method, ex.target, ex.headers, ex.peer, "http", self._strip, body
            )
        except UpstreamError as err:
            self._error(ex, err)
            return
        latency = perf_counter() - t0
        self._upstream_latency.observe(latency)
        status, rbody = answer.status, answer.body
        rheaders = response_headers(answer.headers)

        batch = None
        if request is not None and status == 200:
            batch = self._decide(ex, call, request, rbody, latency, arrived, body_groups)
        if batch is None:
            ex.respond(status, rheaders, rbody)
            return
        rid = batch.decisions[0].request_id
        reviewed = [d for d in batch.decisions if d.review is not None]
        if reviewed and self._hold:
            batch.held = Held(status, rheaders, rbody)
            first = reviewed[0]
            ticket = orjson.dumps(
                {
                    "review_ticket": first.decision_id,
                    "decision_id": rid,
                    "status": "held",
                    "reason": first.review_reason,
                    "status_url": f"{self._control_url}/review/items/{first.decision_id}",
                }
            )
            self._pipeline.submit(batch, urgent=True)
            ex.respond(
                202,
                [_JSON, (b"x-review-status", b"held"), (b"x-decision-id", rid.encode())],
                ticket,
            )
            return
        self._pipeline.submit(batch)
        if reviewed:
            rheaders.append((b"x-review-status", b"queued"))
        rheaders.append((b"x-decision-id", rid.encode()))
        ex.respond(status, rheaders, rbody)

    def _take_body_groups(self, request: Any, body: bytes) -> tuple[Any, bytes]:
        """Remove the group-attribute field from `parameters` before forwarding (V2's channel)."""
        field = self._groups.body_field if self._groups is not None else None
        if field is None or not isinstance(request, dict):
            return None, body
        params = request.get("parameters")
        if not isinstance(params, dict) or field not in params:
            return None, body
        groups = params.pop(field)
        if not params:
            del request["parameters"]
        return groups, orjson.dumps(request)

    def _decide(
        self,
        ex: Exchange,
        call: Call,
        request: Any,
        rbody: bytes,
        latency: float,
        arrived: float,
        body_groups: Any,
    ) -> Batch | None:
        try:
            response = orjson.loads(rbody)
        except orjson.JSONDecodeError:
            self._parse_failed(call.protocol, "response_json")
            return None
        try:
            parsed = call.parse(request, response, self._feature_names, self._labels)
        except (ParseError, TypeError, ValueError, KeyError, IndexError) as exc:
            self._parse_failed(call.protocol, type(exc).__name__)
            log.debug("could not parse %s call: %s", call.protocol, exc)
            return None
        rows = parsed.rows
        if not rows:
            return None
        if len(rows) > self._max_rows:
            self._rows_skipped.inc(len(rows) - self._max_rows)
            rows = rows[: self._max_rows]
        headers = ex.headers
        request_id = None
        explain = review = False
        for name, value in headers:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == self._explain_header:
                explain = value.lower() in _TRUE
            elif name == self._review_header:
                review = value.lower() in _TRUE
        rid = accept_request_id(request_id)
        version = response.get("model_version") if isinstance(response, dict) else None
        version = str(version) if version else (call.model_version or self._model_version)
        names = parsed.feature_names
        # Without derivation rules every row has the request's attributes: parse them once.
        source = self._groups
        per_row = source is not None and source.derives
        shared = source.from_request(headers, body_groups, None) if source and not per_row else {}
        router = self._router
        latency_ms = latency * 1000.0
        decisions = []
        for i, row in enumerate(rows):
            groups = shared
            if per_row:
                assert source is not None
                feats = (
                    dict(zip(names, row.features, strict=False))
                    if names and row.features is not None
                    else None
                )
                groups = source.from_request(headers, body_groups, feats)
            d = Decision(
                rid, i, arrived, call.protocol, call.model_name, version, row.features, names,
                row.prediction, row.probabilities, row.confidence, 200, latency_ms, groups,
            )  # fmt: skip
            if router is not None:
                reason = router.route(d, review)
                if reason is not None:
                    d.review = "held" if self._hold else "queued"
                    d.review_reason = reason
            decisions.append(d)
        return Batch(decisions, explain_requested=explain)

    async def _stream(self, ex: Exchange) -> None:
        """Forward a non-inference call with both bodies streamed, never held whole."""
        data = ex.chunks() if ex.has_body else None
        t0 = perf_counter()
        try:
            async with self._upstream.stream(
                ex.method, ex.target, ex.headers, ex.peer, "http", data
            ) as answer:
                await ex.start(answer.status, response_headers(answer.headers))
                async for chunk in answer:
                    await ex.write(chunk)
                ex.end()
            self._upstream_latency.observe(perf_counter() - t0)
        except UpstreamError as err:
            if ex.started:
                # The status line is gone; all that is left is to cut the connection.
                self._upstream_errors[err.status].inc()
                log.warning("upstream failed mid-response for %s: %s", ex.path, err.detail)
                raise
            self._error(ex, err)
