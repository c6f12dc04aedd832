"""The data plane: a raw ASGI app that forwards everything and records inference calls.

The request path reads top to bottom in `__call__` and `_inference`:
receive, forward, parse, decide, enqueue, return. Nothing on it waits for
explanation, Kafka or disk; those happen behind `Pipeline.submit`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from sidecar.decisions import Decision, accept_request_id
from sidecar.headers import request_headers, response_headers
from sidecar.metrics import Registry
from sidecar.pipeline import Batch, Held, Pipeline
from sidecar.protocols import Call, ParseError, recognise
from sidecar.types import Receive, Scope, Send
from sidecar.upstream import Upstream, UpstreamError, classify

log = logging.getLogger("sidecar.dataplane")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_TRUE = frozenset({b"1", b"true", b"yes", b"on"})
perf_counter = time.perf_counter
wall_clock = time.time


class GroupSource(Protocol):
    """Where group attributes come from (sidecar.groups)."""

    header_name: bytes
    body_field: str | None

    def from_request(
        self, headers: list[tuple[bytes, bytes]], body_groups: Any, features: dict[str, Any] | None
    ) -> dict[str, str]: ...


class Router(Protocol):
    """Review routing rules (sidecar.review.routing)."""

    mode: str
    header_name: bytes

    def route(self, decision: Decision, review_requested: bool) -> str | None: ...


def _error(status: int, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())], body


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


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
        self._parse_failures: dict[str, Any] = {}
        self._registry = r
        self._too_large_count = r.counter(
            "sidecar_request_too_large_total", "Inference calls refused with 413"
        )
        self._rows_skipped = r.counter(
            "sidecar_rows_not_recorded_total", "Rows past proxy.max_rows_per_request"
        )
        self._disconnects = r.counter(
            "sidecar_client_disconnects_total", "Calls cancelled because the client went away"
        )

    def _parse_failed(self, protocol: str, reason: str) -> None:
        key = f"{protocol}:{reason}"
        c = self._parse_failures.get(key)
        if c is None:
            c = self._registry.counter(
                "sidecar_parse_failures_total",
                "Recognised calls whose bodies could not be understood (still forwarded)",
                {"protocol": protocol, "reason": reason},
            )
            self._parse_failures[key] = c
        c.inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        qs = scope["query_string"]
        path = scope.get("raw_path") or scope["path"].encode()
        target = path + b"?" + qs if qs else path
        call = recognise(scope["method"], scope["path"], self._mlflow_model)
        try:
            if call is None:
                self._requests["passthrough"].inc()
                await self._stream(scope, receive, send, target.decode("latin-1"))
            else:
                self._requests["inference"].inc()
                await self._inference(scope, receive, send, target, call)
        except asyncio.CancelledError:
            self._disconnects.inc()
            raise

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self._max_body:
                return None
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _inference(
        self, scope: Scope, receive: Receive, send: Send, target: bytes, call: Call
    ) -> None:
        arrived = wall_clock()
        body = await self._read_body(scope, receive)
        if body is None:
            self._too_large_count.inc()
            await _respond(send, *_error(413, self._too_large))
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        try:
            request: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
            self._parse_failed(call.protocol, "request_json")
        body_groups, body = self._take_body_groups(request, body, call)

        client = scope.get("client")
        watcher = asyncio.get_running_loop().create_task(
            _cancel_on_disconnect(receive, asyncio.current_task())  # type: ignore[arg-type]
        )
        t0 = perf_counter()
        try:
            answer = await self._upstream.buffered(
                scope["method"],
                target,
                headers,
                client[0] if client else None,
                scope["scheme"],
                self._strip,
                body,
            )
        except UpstreamError as err:
            self._upstream_errors[err.status].inc()
            await _respond(send, *_error(err.status, err.body()))
            return
        finally:
            watcher.cancel()
        status = answer.status
        rbody = answer.body
        rheaders = response_headers(answer.headers)
        latency = perf_counter() - t0
        self._upstream_latency.observe(latency)

        batch = None
        if request is not None and status == 200:
            batch = self._decide(scope, call, request, rbody, status, latency, arrived, body_groups)
        if batch is None:
            await _respond(send, status, rheaders, rbody)
            return
        rid = batch.decisions[0].request_id if batch.decisions else ""
        reviewed = [d for d in batch.decisions if d.review is not None]
        if reviewed and self._hold:
            batch.held = Held(status, rheaders, rbody)
            ticket = orjson.dumps(
                {
                    "review_ticket": reviewed[0].decision_id,
                    "decision_id": rid,
                    "status": "held",
                    "reason": reviewed[0].review_reason,
                    "status_url": f"{self._control_url}/review/items/{reviewed[0].decision_id}",
                }
            )
            self._pipeline.submit(batch)
            status, rheaders, rbody = _error(202, ticket)
            rheaders.append((b"x-review-status", b"held"))
        else:
            self._pipeline.submit(batch)
            if reviewed:
                rheaders.append((b"x-review-status", b"queued"))
        rheaders.append((b"x-decision-id", rid.encode()))
        await _respond(send, status, rheaders, rbody)

    def _take_body_groups(self, request: Any, body: bytes, call: Call) -> tuple[Any, bytes]:
        """Remove the configured group-attribute field from a V2 call's `parameters` before forwarding."""
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
        scope: Scope,
        call: Call,
        request: Any,
        rbody: bytes,
        status: int,
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
        if len(rows) > self._max_rows:
            self._rows_skipped.inc(len(rows) - self._max_rows)
            rows = rows[: self._max_rows]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
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
        groups_fn = self._groups.from_request if self._groups is not None else None
        latency_ms = latency * 1000.0
        decisions = []
        for i, row in enumerate(rows):
            groups: dict[str, str] = {}
            if groups_fn is not None:
                feats = (
                    dict(zip(names, row.features, strict=False))
                    if names and row.features is not None
                    else None
                )
                groups = groups_fn(headers, body_groups, feats)
            d = Decision(
                rid,
                i,
                arrived,
                call.protocol,
                call.model_name,
                version,
                row.features,
                names,
                row.prediction,
                row.probabilities,
                row.confidence,
                status,
                latency_ms,
                groups,
            )
            if self._router is not None:
                reason = self._router.route(d, review)
                if reason is not None:
                    d.review = "held" if self._hold else "queued"
                    d.review_reason = reason
            decisions.append(d)
        if not decisions:
            return None
        return Batch(decisions, explain_requested=explain)

    async def _stream(self, scope: Scope, receive: Receive, send: Send, path_qs: str) -> None:
        """Forward a non-inference call with both bodies streamed, never held whole."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        has_body = any(
            (n == b"content-length" and v != b"0") or n == b"transfer-encoding" for n, v in headers
        )
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        watchers: list[asyncio.Task[None]] = []
        data: AsyncIterator[bytes] | None = None
        if has_body:

            async def body() -> AsyncIterator[bytes]:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        task.cancel()
                        return
                    chunk = message.get("body", b"")
                    if chunk:
                        yield chunk
                    if not message.get("more_body", False):
                        watchers.append(loop.create_task(_cancel_on_disconnect(receive, task)))
                        return

            data = body()
        else:
            await receive()
            watchers.append(loop.create_task(_cancel_on_disconnect(receive, task)))
        client = scope.get("client")
        out_headers = request_headers(headers, client[0] if client else None, scope["scheme"])
        started = False
        t0 = perf_counter()
        try:
            async with self._upstream.request(scope["method"], path_qs, out_headers, data) as resp:
                await send(
                    {
                        "type": "http.response.start",
                        "status": resp.status,
                        "headers": response_headers(resp.raw_headers),
                    }
                )
                started = True
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            self._upstream_latency.observe(perf_counter() - t0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if started:
                # The status line is gone; all that is left is to cut the connection.
                log.warning("upstream failed mid-response for %s: %r", path_qs, exc)
                raise
            err: UpstreamError = classify(exc)
            self._upstream_errors[err.status].inc()
            await _respond(send, *_error(err.status, err.body()))
        finally:
            for w in watchers:
                w.cancel()
