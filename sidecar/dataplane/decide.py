"""The transport-neutral decide step: one recognised call's request and answer become decisions.

An adapter (HTTP/1.1 in `http.py`; gRPC next) receives the call, forwards it
and hands this module what it saw: the parsed request, the answer's body,
the request's headers (lower-case names, bytes), the upstream latency. It
gets back a `Batch` for the pipeline, or None when the call is not one the
sidecar can record (counted as a parse failure, the answer untouched).
Nothing here does I/O.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson

from sidecar.dataplane.protocols import Call, ParseError, binary, recognise, v2
from sidecar.decisions import Decision, client_request_id, new_call_id
from sidecar.metrics import Counter, Registry
from sidecar.pipeline.queue import Batch
from sidecar.pipeline.routing import flag_set
from sidecar.types import RawHeaders

log = logging.getLogger("sidecar.dataplane")

_CALL_CACHE = 256
# Longer paths are recognised each time rather than cached: 256 of them could otherwise
# hold as much memory as 256 of the longest request lines.
_CALL_CACHE_PATH = 512
_PROTOCOLS = ("kserve_v1", "v2", "mlflow")
_REASONS = ("request_json", "response_json", "request_binary", "response_binary", "ParseError")
_PARSE_ERRORS = (ParseError, TypeError, ValueError, KeyError, IndexError, RecursionError)
# An answer that could not be read (already counted); JSON's null is a readable answer.
_UNREADABLE = object()


class GroupSource(Protocol):
    """Where group attributes come from (sidecar.dataplane.groups)."""

    @property
    def header_name(self) -> bytes: ...
    @property
    def body_field(self) -> str | None: ...
    @property
    def derives(self) -> bool: ...

    def take_body_field(self, body: dict[str, Any]) -> Any: ...

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


class Decider:
    """Recognises inference calls and turns their rows into decisions; built once per service."""

    def __init__(
        self,
        *,
        registry: Registry,
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
        self._max_rows = max_rows
        self._mlflow_model = mlflow_model
        self._model_version = model_version
        self._feature_names = feature_names
        self._labels = class_labels
        self._groups = groups
        # Whether a request body may carry the group attributes (then it is searched).
        self._body_field = groups is not None and groups.body_field is not None
        self._router = router
        self._explain_header = explain_header
        self._review_header = router.header_name if router is not None else None
        self.hold = router is not None and router.mode == "hold"
        self._control_url = control_url.rstrip("/")
        # Headers the model never sees: the group-attribute channel.
        self.strip = frozenset({groups.header_name}) if groups is not None else frozenset()
        self._calls: dict[tuple[str, str], Call | None] = {}
        self._registry = registry
        self._parse_failures: dict[tuple[str, str], Counter] = {}
        # Registered up front so dashboards see zeros, not a missing series.
        for protocol in _PROTOCOLS:
            for reason in _REASONS:
                self.parse_failed(protocol, reason, 0)
        self._rows_skipped = registry.counter(
            "sidecar_rows_not_recorded_total", "Rows past proxy.max_rows_per_request"
        )

    def parse_failed(self, protocol: str, reason: str, n: int = 1) -> None:
        key = (protocol, reason)
        c = self._parse_failures.get(key)
        if c is None:
            c = self._registry.counter(
                "sidecar_parse_failures_total",
                "Recognised calls whose bodies could not be understood (still forwarded)",
                {"protocol": protocol, "reason": reason},
            )
            self._parse_failures[key] = c
        c.inc(n)

    def recognise(self, method: str, path: str) -> Call | None:
        """The inference call this is, or None (then it is forwarded without parsing)."""
        # Clients call the same few paths over and over; the cache is cleared when full
        # so a scan of random paths cannot grow it.
        key = (method, path)
        try:
            return self._calls[key]
        except KeyError:
            pass
        call = recognise(method, path, self._mlflow_model)
        if len(path) <= _CALL_CACHE_PATH:
            if len(self._calls) >= _CALL_CACHE:
                self._calls.clear()
            self._calls[key] = call
        return call

    def read_request(
        self, call: Call, body: bytes, headers: RawHeaders
    ) -> tuple[Any, Any, bytes, RawHeaders]:
        """(the parsed request or None, its group attributes, the body and headers to forward).

        The body is forwarded byte for byte unless the group-attribute field had
        to be taken out of it (then a binary-extension call's header length is
        rewritten to match).
        """
        try:
            request: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            # A binary-extension body is JSON followed by raw bytes, so it fails here:
            # only then are the headers searched, which keeps that off every JSON call.
            return self._read_binary(call, body, headers)
        if self._body_field:
            groups, stripped = self._take_groups(request, body)
            if groups is not None:
                return request, groups, stripped, _header_length(headers, len(stripped))
        return request, None, body, headers

    def _read_binary(
        self, call: Call, body: bytes, headers: RawHeaders
    ) -> tuple[Any, Any, bytes, RawHeaders]:
        try:
            length = binary.header_length(headers) if call.protocol == v2.NAME else None
            if length is None:
                self.parse_failed(call.protocol, "request_json")
                return None, None, body, headers
            request, section = binary.split(body, length)
            groups, header = self._take_groups(request, b"")
            if groups is not None:
                body = header + section.tobytes()
                headers = _header_length(headers, len(header))
            if isinstance(request, dict):
                binary.fill(request.get("inputs"), section)
        except ParseError:
            self.parse_failed(call.protocol, "request_binary")
            return None, None, body, headers
        return request, groups, body, headers

    def _take_groups(self, request: Any, body: bytes) -> tuple[Any, bytes]:
        if self._groups is None or self._groups.body_field is None or not isinstance(request, dict):
            return None, body
        groups = self._groups.take_body_field(request)
        if groups is None:
            return None, body
        return groups, orjson.dumps(request)

    def _binary_response(self, call: Call, rbody: bytes, rheaders: RawHeaders) -> Any:
        """An answer that is not JSON, read as the binary extension when it says it is one;
        _UNREADABLE (counted) when not."""
        try:
            length = binary.header_length(rheaders) if call.protocol == v2.NAME else None
            if length is None:
                self.parse_failed(call.protocol, "response_json")
                return _UNREADABLE
            response, section = binary.split(rbody, length)
            if isinstance(response, dict):
                binary.fill(response.get("outputs"), section)
        except ParseError:
            self.parse_failed(call.protocol, "response_binary")
            return _UNREADABLE
        return response

    def decide(
        self,
        call: Call,
        request: Any,
        rbody: bytes,
        rheaders: RawHeaders,
        headers: RawHeaders,
        latency: float,
        arrived: float,
        body_groups: Any,
    ) -> Batch | None:
        """The decisions of a call the upstream answered 200, or None when it cannot be recorded."""
        try:
            response = orjson.loads(rbody)
        except orjson.JSONDecodeError:
            response = self._binary_response(call, rbody, rheaders)
            if response is _UNREADABLE:
                return None
        return self.decide_parsed(call, request, response, headers, latency, arrived, body_groups)

    def decide_parsed(
        self,
        call: Call,
        request: Any,
        response: Any,
        headers: RawHeaders,
        latency: float,
        arrived: float,
        body_groups: Any,
        call_id: str | None = None,
    ) -> Batch | None:
        """`decide` for an answer already read into the V2 JSON shape (the gRPC adapter's,
        which gives the call id it already sent the client)."""
        try:
            parsed = call.parse(request, response, self._feature_names, self._labels)
        except _PARSE_ERRORS as exc:
            self.parse_failed(call.protocol, type(exc).__name__)
            log.debug("could not parse %s call: %s", call.protocol, exc)
            return None
        rows = parsed.rows
        if not rows:
            return None
        if len(rows) > self._max_rows:
            self._rows_skipped.inc(len(rows) - self._max_rows)
            rows = rows[: self._max_rows]
        request_id = None
        explain = review = False
        for name, value in headers:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == self._explain_header:
                explain = flag_set(value)
            elif name == self._review_header:
                review = flag_set(value)
        client_id = None if request_id is None else client_request_id(request_id)
        if client_id is None and call.protocol == v2.NAME and isinstance(request, dict):
            # A V2 body's id: clients that cannot read response headers (tritonclient)
            # find their decisions by it.
            body_id = request.get("id")
            client_id = client_request_id(body_id) if type(body_id) is str else None
        call_id = call_id or new_call_id()
        version = response.get("model_version") if isinstance(response, dict) else None
        version = str(version) if version else (call.model_version or self._model_version)
        names = parsed.feature_names
        # Without derivation rules every row has the request's attributes: parse them once.
        source = self._groups
        per_row = source is not None and source.derives
        shared = source.from_request(headers, body_groups, None) if source and not per_row else {}
        router = self._router
        status = "held" if self.hold else "queued"
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
                call_id=call_id,
                request_id=client_id,
                row=i,
                time=arrived,
                protocol=call.protocol,
                model_name=call.model_name,
                model_version=version,
                features=row.features,
                feature_names=names,
                prediction=row.prediction,
                probabilities=row.probabilities,
                confidence=row.confidence,
                upstream_status=200,
                upstream_latency_ms=latency_ms,
                group_attributes=groups,
            )
            if router is not None:
                reason = router.route(d, review)
                if reason is not None:
                    d.review = status
                    d.review_reason = reason
            decisions.append(d)
        return Batch(decisions, explain_requested=explain)

    def hold_ticket(self, first_held: Decision) -> bytes:
        """What a client gets instead of the model's answer while a held decision awaits review."""
        return orjson.dumps(
            {
                "review_ticket": first_held.decision_id,
                "decision_id": first_held.call_id,
                "status": "held",
                "reason": first_held.review_reason,
                "status_url": f"{self._control_url}/review/items/{first_held.decision_id}",
            }
        )


def _header_length(headers: RawHeaders, length: int) -> RawHeaders:
    """The headers with `Inference-Header-Content-Length` (when sent) set to `length`."""
    value = str(length).encode()
    return [(n, value if n == binary.HEADER else v) for n, v in headers]
