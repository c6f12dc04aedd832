"""Event bodies: what downstream monitors, auditors and reviewers consume.

Every builder returns a JSON-ready dict with `event_type`, `schema_version`,
a stable `event_id` and an RFC 3339 `time`. The id is a UUIDv5 of what
identifies the event (the decision id, the kind, and for reviews the audit
link), so a replayed or rebuilt event keeps its id and consumers can
de-duplicate on it: delivery is at least once. The JSON Schemas in
`sidecar/schemas/` describe each type; tests validate produced events
against them.
"""

from __future__ import annotations

import hashlib
import importlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from sidecar.decisions import Decision

SCHEMA_VERSION = 1
# CloudEvents `type` per event kind (reverse-DNS, versioned with the schema).
CE_TYPES: dict[str, str] = {
    "decision": "org.explaining-sidecar.decision.v1",
    "explanation": "org.explaining-sidecar.explanation.v1",
    "review": "org.explaining-sidecar.review.v1",
    "gap": "org.explaining-sidecar.gap.v1",
    "outcome": "org.explaining-sidecar.outcome.v1",
}
ReviewAction = Literal["requested", "claimed", "released", "decided"]
Verdict = Literal["approve", "override"]
FeaturesPolicy = Literal["full", "hash"]

# Fixed namespace so ids agree across processes, restarts and machines.
_NAMESPACE = uuid.UUID("6b1f4c3e-2a8d-5e7b-9c41-0d3f5a6e7b80").bytes
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


# CPython's own SHA-1 and SHA-256 rather than OpenSSL's: the background stage runs every
# 25 ms on a cold cache, where OpenSSL's context set-up per digest cost more than the
# digest (measured: 5.5 against 3.5 µs per event id; same digests, pinned by tests).
def _builtin(module: str, name: str) -> Callable[[bytes], hashlib._Hash]:
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError):  # a CPython built without its own hashes
        return getattr(hashlib, name)  # type: ignore[no-any-return]


_sha1 = _builtin("_sha1", "sha1")
_sha256 = _builtin("_sha256", "sha256")

# The RFC 9562 variant bits (10xx) applied to one hex digit.
_VARIANT = {f"{i:x}": f"{(i & 0x3) | 0x8:x}" for i in range(16)}


def event_id(*parts: object) -> str:
    """A stable id from the parts that identify one event: a UUIDv5 (RFC 9562)."""
    # Equal to str(uuid.uuid5(namespace, name)); formatting the digest's hex directly
    # is several times cheaper than building UUID objects, and it runs once per event.
    h = _sha1(_NAMESPACE + "\x1f".join(map(str, parts)).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_second: tuple[int, str] = (-1, "")


def rfc3339(ts: float | None = None) -> str:
    """Unix seconds (default: now) as RFC 3339 UTC with microseconds, e.g. 2026-11-23T10:00:00.000001Z."""
    global _second
    if ts is None:
        ts = time.time()
    sec = int(ts // 1)
    micros = round((ts - sec) * 1e6)
    if micros >= 1_000_000:
        sec, micros = sec + 1, micros - 1_000_000
    cached = _second
    if cached[0] != sec:
        # Events come in bursts within one second: format the date part once per second.
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{micros:06d}Z"


def features_hash(features: list[Any] | None) -> str | None:
    """SHA-256 of the feature vector's canonical JSON, `sha256:<hex>` (None without features)."""
    if features is None:
        return None
    return "sha256:" + _sha256(orjson.dumps(features, option=_JSON_OPTS)).hexdigest()


# Each Decision field's key in the decision event. The event's names are a contract
# with its consumers (sidecar/schemas/decision.v1.json), so a new Decision field gets
# its place here on purpose, or is listed in DECISION_EVENT_LEFT_OUT:
# tests/test_decision_fields.py fails until one of the two names it. All values are
# carried as they are except the three noted. The event adds its own keys: event_type,
# schema_version, event_id, and decision_id and features_hash derived from the decision.
DECISION_EVENT_KEYS: dict[str, str] = {
    "call_id": "call_id",
    "request_id": "request_id",  # the client's, or None
    "row": "row",
    "time": "time",  # as RFC 3339
    "protocol": "protocol",
    "model_name": "model_name",
    "model_version": "model_version",
    "features": "features",  # None under the "hash" features policy
    "feature_names": "feature_names",
    "prediction": "prediction",
    "probabilities": "probabilities",
    "confidence": "confidence",
    "upstream_status": "upstream_status",
    "upstream_latency_ms": "upstream_latency_ms",
    "group_attributes": "group_attributes",  # a copy
    "review": "review",
    "review_reason": "review_reason",
    "sampled": "sampled",
    "sample_reason": "sample_reason",
    "explain_requested": "explain_requested",
}
# Decision fields deliberately kept out of the decision event.
DECISION_EVENT_LEFT_OUT: frozenset[str] = frozenset()


def argmax_rule() -> dict[str, Any]:
    return {"kind": "argmax"}


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a fairness monitor needs in every decision event and is constant per model.

    `class_labels` (probability order) and `favourable_label` come from `model.*`;
    `decision_rule` says how the server's score became its prediction:
    `{"kind": "argmax"}` (the most probable class) or `{"kind": "threshold",
    "label": L, "threshold": t}` (L when its probability is at least t). They are
    added when the event is built, in the background, never on the request path;
    every event of a model shares these objects, which are serialised, never mutated.
    """

    class_labels: tuple[str, ...] | None = None
    favourable_label: str | None = None
    decision_rule: dict[str, Any] = field(default_factory=argmax_rule)

    @classmethod
    def of(
        cls,
        class_labels: Sequence[str],
        favourable_label: str | None,
        threshold: float | None = None,
        threshold_label: str | None = None,
    ) -> ModelFacts:
        """From the `model.*` settings (already validated: labels, threshold in [0, 1])."""
        labels = tuple(class_labels) or None
        if threshold is None:
            return cls(labels, favourable_label)
        label = threshold_label or (labels[-1] if labels else None)
        if label is None:
            raise ValueError("a decision threshold needs class labels (the class it applies to)")
        rule = {"kind": "threshold", "label": label, "threshold": float(threshold)}
        return cls(labels, favourable_label, rule)


NO_MODEL_FACTS = ModelFacts()
# The decision event's keys that come from the model's settings, not from the decision.
DECISION_EVENT_MODEL_KEYS: tuple[str, ...] = ("class_labels", "favourable_label", "decision_rule")


def _compile_body() -> Callable[[Decision, str, str, ModelFacts], dict[str, Any]]:
    """The event body as one dict display compiled from DECISION_EVENT_KEYS.

    Compiled as dataclasses compiles `__init__`: a body is built for every
    decision, and filling it from the mapping key by key (dict.update over zip)
    cost 1.1 µs more per event than a display (measured: 6.5 against 5.3 µs).
    """
    fields = "".join(f"{key!r}: d.{name}, " for name, key in DECISION_EVENT_KEYS.items())
    facts = "".join(f"{key!r}: m.{key}, " for key in DECISION_EVENT_MODEL_KEYS)
    source = (
        "lambda d, event_id, decision_id, m: {'event_type': 'decision', "
        f"'schema_version': {SCHEMA_VERSION}, 'event_id': event_id, 'decision_id': decision_id, "
        f"{fields}{facts}'features_hash': None}}"
    )
    body: Callable[[Decision, str, str, ModelFacts], dict[str, Any]] = eval(source)
    return body


_body = _compile_body()
# The fields carried as something other than their value.
_TIME_KEY, _FEATURES_KEY, _GROUPS_KEY = (
    DECISION_EVENT_KEYS[name] for name in ("time", "features", "group_attributes")
)


def decision_event(
    decision: Decision, features: FeaturesPolicy = "full", model: ModelFacts = NO_MODEL_FACTS
) -> dict[str, Any]:
    """The `sidecar.decisions` body for one decision.

    `features="hash"` leaves the values out and keeps only their hash (the
    names stay, so a consumer still knows the schema). Group attributes are
    taken as they are on the decision: the privacy policy has already been
    applied when they were extracted. `model` adds the class labels, the
    favourable label and the decision rule.
    """
    did = decision.decision_id
    body = _body(decision, event_id(did, "decision"), did, model)
    body[_TIME_KEY] = rfc3339(decision.time)
    if features != "full":
        body[_FEATURES_KEY] = None
    body["features_hash"] = features_hash(decision.features)
    body[_GROUPS_KEY] = dict(decision.group_attributes)
    return body


_EXPLANATION_KEYS = (
    "model_version",
    "explainer",
    "explainer_version",
    "output_space",
    "feature_names",
    "base_values",
    "contributions",
    "additivity_error",
    "cache_hit",
    "background_hash",
    "top",
    "margin",
    "fidelity",
    "fidelity_detail",
)


def explanation_event(
    decision: Decision, explanation: dict[str, Any], time: float | None = None
) -> dict[str, Any]:
    """The `sidecar.explanations` body: `explanation` is `Explanation.to_dict()`."""
    missing = [k for k in _EXPLANATION_KEYS if k not in explanation]
    if missing:
        raise ValueError(f"explanation lacks {', '.join(missing)}")
    did = decision.decision_id
    body: dict[str, Any] = {
        "event_type": "explanation",
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id(
            did, "explanation", explanation["explainer"], explanation["model_version"]
        ),
        "time": rfc3339(time),
        "decision_id": did,
        "model_name": decision.model_name,
        "group_attributes": dict(decision.group_attributes),
    }
    for k in _EXPLANATION_KEYS:
        body[k] = explanation[k]
    return body


def review_event(
    *,
    decision_id: str,
    action: ReviewAction,
    reason: str | None,
    reviewer: str | None,
    outcome: str | None,
    previous_audit_hash: str | None,
    time: float | None = None,
    audit_hash: str | None = None,
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """The `sidecar.reviews` body for one step of a review; `verdict` (approve or override)
    on a decided step only.

    The id is derived from the step's place in the audit chain
    (`previous_audit_hash`), so each step has one id however often it is sent.
    """
    if action not in ("requested", "claimed", "released", "decided"):
        raise ValueError(
            f"review action must be requested|claimed|released|decided, not {action!r}"
        )
    if (verdict is None) != (action != "decided") or verdict not in (None, "approve", "override"):
        raise ValueError(f"a decided step has a verdict (approve|override), no other: {verdict!r}")
    when = rfc3339(time)
    return {
        "event_type": "review",
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id(decision_id, "review", action, previous_audit_hash or "", when),
        "time": when,
        "decision_id": decision_id,
        "action": action,
        "reason": reason,
        "reviewer": reviewer,
        "outcome": outcome,
        "verdict": verdict,
        "previous_audit_hash": previous_audit_hash,
        "audit_hash": audit_hash,
    }


GAP_REASONS = ("queue_full", "spool_full", "spool_error", "closed", "invalid", "crashed")


def gap_event(
    *,
    reason: str,
    by_kind: dict[str, int],
    first_time: float,
    last_time: float,
    decision_ids: list[str] | None = None,
    decision_ids_complete: bool = True,
    nonce: object = "",
) -> dict[str, Any]:
    """A record of events that will never be in the stream: why, how many, of which kinds, when.

    `decision_ids` names the lost decisions (complete unless `decision_ids_complete`
    is false), so a consumer can join the record to what it missed; the time range
    covers the decisions' loss, not their making.
    """
    if reason not in GAP_REASONS:
        raise ValueError(f"gap reason must be one of {', '.join(GAP_REASONS)}, not {reason!r}")
    ids = list(decision_ids or [])
    return {
        "event_type": "gap",
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id("gap", reason, first_time, last_time, nonce),
        "time": rfc3339(last_time),
        "reason": reason,
        "dropped": sum(by_kind.values()),
        "by_kind": dict(by_kind),
        "first_time": rfc3339(first_time),
        "last_time": rfc3339(last_time),
        "decision_ids": ids,
        "decision_ids_complete": decision_ids_complete and len(ids) == by_kind.get("decision", 0),
    }


OutcomeValue = str | int | float


def outcome_event(
    *,
    decision_id: str,
    outcome: OutcomeValue,
    observed_at: str,
    received_at: str,
    source: str,
    decision_known: bool | None,
) -> dict[str, Any]:
    """The `sidecar.outcomes` body: the ground truth for one decision.

    The id depends on the decision id alone, so posting a decision's outcome
    again (or loading the same file twice) gives the same `event_id`, and
    consumers that de-duplicate on it keep one outcome per decision. `time`
    is `received_at`, as every event has a `time`.
    """
    return {
        "event_type": "outcome",
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id(decision_id, "outcome"),
        "time": received_at,
        "decision_id": decision_id,
        "outcome": outcome,
        "observed_at": observed_at,
        "received_at": received_at,
        "source": source,
        "decision_known": decision_known,
    }


# Without OPT_NON_STR_KEYS orjson serialises a dict on its fast path: a decision event in
# 0.60 against 0.85 µs warm (10 features, 2026-12-01), and ~5 µs in place in the
# background stage of a saturated sidecar (profile_proxy). The output is the same bytes.
_STR_KEYS_OPTS = orjson.OPT_SERIALIZE_NUMPY


def dumps(body: dict[str, Any]) -> bytes:
    """Serialise an event body (orjson; numpy values and non-string keys allowed)."""
    try:
        return orjson.dumps(body, option=_STR_KEYS_OPTS)
    except orjson.JSONEncodeError:
        # A key that is not a string somewhere in the body (rare): written as its string.
        return orjson.dumps(body, option=_JSON_OPTS)
