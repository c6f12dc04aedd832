"""The data plane's HTTP/1.1 adapter: forwards everything, and records inference calls.

The request path reads top to bottom in `handle` and `_inference`:
receive, forward, parse, decide, enqueue, return. Nothing on it waits for
explanation, Kafka or disk; those happen behind `Pipeline.submit`. What a
call's rows become is the transport-neutral `Decider`'s business.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from sidecar.dataplane.decide import Decider
from sidecar.dataplane.errors import UpstreamError
from sidecar.dataplane.headers import response_headers
from sidecar.dataplane.protocols import Call
from sidecar.dataplane.server import ClientGone, Exchange
from sidecar.dataplane.upstream import Upstream
from sidecar.metrics import Registry
from sidecar.pipeline.queue import Held, Pipeline

log = logging.getLogger("sidecar.dataplane")

_JSON = (b"content-type", b"application/json")
_OVERLOADED = orjson.dumps(
    {
        "error": "overloaded",
        "detail": "the sidecar cannot record decisions now; the call was not forwarded "
        "(decisions.on_overload = reject)",
    }
)
perf_counter = time.perf_counter
wall_clock = time.time


class DataPlane:
    def __init__(
        self,
        *,
        upstream: Upstream,
        pipeline: Pipeline,
        decider: Decider,
        registry: Registry,
        max_body: int,
    ) -> None:
        self._upstream = upstream
        self._pipeline = pipeline
        self._decider = decider
        self._max_body = max_body
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
            for code in (502, 503, 504)
        }
        self._too_large_count = r.counter(
            "sidecar_request_too_large_total", "Inference calls refused with 413"
        )
        self._disconnects = r.counter(
            "sidecar_client_disconnects_total", "Calls cancelled because the client went away"
        )

    async def handle(self, ex: Exchange) -> None:
        call = self._decider.recognise(ex.method, ex.path)
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
        if not self._pipeline.admits():
            # decisions.on_overload = "reject": nothing reaches the model that cannot be recorded.
            ex.respond(503, [_JSON, (b"retry-after", b"1")], _OVERLOADED)
            return
        decider = self._decider
        request, body_groups, body, headers = decider.read_request(call, body, ex.headers)

        t0 = perf_counter()
        try:
            answer = await self._upstream.buffered(
                ex.method, ex.target, headers, ex.peer, "http", decider.strip, body
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
            batch = decider.decide(
                call, request, rbody, rheaders, ex.headers, latency, arrived, body_groups
            )
        if batch is None:
            ex.respond(status, rheaders, rbody)
            return
        rid = batch.decisions[0].call_id
        reviewed = [d for d in batch.decisions if d.review is not None]
        if reviewed and decider.hold:
            batch.held = Held(status, rheaders, rbody)
            if not self._pipeline.submit(batch, urgent=True):
                # Shed (the gap record names it): a ticket for it would answer 404.
                ex.respond(status, rheaders, rbody)
                return
            ex.respond(
                202,
                [_JSON, (b"x-review-status", b"held"), (b"x-decision-id", rid.encode())],
                decider.hold_ticket(reviewed[0]),
            )
            return
        self._pipeline.submit(batch)
        if reviewed:
            rheaders.append((b"x-review-status", b"queued"))
        rheaders.append((b"x-decision-id", rid.encode()))
        ex.respond(status, rheaders, rbody)

    async def _stream(self, ex: Exchange) -> None:
        """Forward a non-inference call with both bodies streamed, never held whole."""
        data = None
        if ex.has_body:
            # No upstream connection for a client that has sent headers and nothing more.
            await ex.wait_body()
            data = ex.chunks()
        t0 = perf_counter()
        try:
            async with self._upstream.stream(
                ex.method, ex.target, ex.headers, ex.peer, "http", self._decider.strip, data
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
