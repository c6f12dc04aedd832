from __future__ import annotations

import hashlib
import uuid
from typing import Any

import jsonschema
import orjson
import pytest

from sidecar.decisions import Decision
from sidecar.sinks import events
from tests.eventlib import make_decision, validate_event


def explanation_dict() -> dict[str, Any]:
    return {
        "model_version": "3",
        "explainer": "treeshap.path_dependent",
        "explainer_version": "1",
        "output_space": "margin",
        "feature_names": ["age", "income", "debt_ratio", "n"],
        "base_values": [-0.4],
        "contributions": [[0.1, -0.2, 0.7, 0.0]],
        "additivity_error": 1e-7,
        "cache_hit": False,
        "background_hash": None,
        "top": [{"feature": "debt_ratio", "value": 0.31, "contribution": 0.7}],
        "margin": [0.2],
        "fidelity": "match",
        "fidelity_detail": {
            "compared": "probabilities",
            "explained": [0.45, 0.55],
            "served": [0.45, 0.55],
            "tolerance": 0.001,
            "max_diff": 0.0,
        },
    }


def test_decision_event_carries_the_design_fields_and_validates(decision: Decision) -> None:
    body = events.decision_event(decision)
    validate_event(body)
    assert body["decision_id"] == "req000000/0"
    assert body["features"] == decision.features
    assert body["features_hash"].startswith("sha256:")
    assert body["group_attributes"] == {"gender": "F"}
    assert body["time"] == "2026-11-23T00:00:00.000000Z"
    assert (body["model_name"], body["model_version"], body["protocol"]) == ("credit", "3", "v2")
    assert (body["upstream_status"], body["upstream_latency_ms"]) == (200, 1.25)


def test_hash_policy_keeps_only_the_hash(decision: Decision) -> None:
    full = events.decision_event(decision)
    hashed = events.decision_event(decision, features="hash")
    validate_event(hashed)
    assert hashed["features"] is None
    assert hashed["features_hash"] == full["features_hash"]
    other = events.decision_event(make_decision(features=[35.0, 52000.0, 0.31, 1]))
    assert other["features_hash"] != full["features_hash"]
    # The digest is SHA-256 of the features' JSON, whichever implementation computes it.
    digest = hashlib.sha256(orjson.dumps(decision.features)).hexdigest()
    assert full["features_hash"] == f"sha256:{digest}"


@pytest.mark.parametrize(
    "parts", [("r/0", "decision"), ("r/1", "review", "decided", "ab" * 32, ""), ("gap", 7, 2.5)]
)
def test_event_id_is_the_uuid5_of_its_parts(parts: tuple[object, ...]) -> None:
    namespace = uuid.UUID(bytes=events._NAMESPACE)
    expected = uuid.uuid5(namespace, "\x1f".join(map(str, parts)))
    assert events.event_id(*parts) == str(expected)
    assert uuid.UUID(events.event_id(*parts)).version == 5


def test_event_ids_are_stable_and_distinct() -> None:
    a1 = events.decision_event(make_decision(1))
    a2 = events.decision_event(make_decision(1))
    b = events.decision_event(make_decision(2))
    assert a1["event_id"] == a2["event_id"] != b["event_id"]
    e = events.explanation_event(make_decision(1), explanation_dict())
    assert e["event_id"] not in (a1["event_id"], b["event_id"])
    assert (
        e["event_id"] == events.explanation_event(make_decision(1), explanation_dict())["event_id"]
    )


def test_explanation_event_validates_and_names_missing_keys(decision: Decision) -> None:
    body = events.explanation_event(decision, explanation_dict())
    validate_event(body)
    assert body["contributions"] == [[0.1, -0.2, 0.7, 0.0]]
    bad = explanation_dict()
    del bad["base_values"]
    with pytest.raises(ValueError, match="base_values"):
        events.explanation_event(decision, bad)


def test_review_events_validate_and_each_step_has_its_own_id() -> None:
    common: dict[str, Any] = {"decision_id": "r/0", "reason": "confidence<0.6", "time": 1.0}
    req = events.review_event(
        action="requested", reviewer=None, outcome=None, previous_audit_hash=None, **common
    )
    decided: dict[str, Any] = {"reviewer": "ana", "outcome": "repaid", "verdict": "override"}
    dec = events.review_event(action="decided", previous_audit_hash="ab12", **decided, **common)
    for body in (req, dec):
        validate_event(body)
    assert req["event_id"] != dec["event_id"]
    assert (req["verdict"], dec["verdict"]) == (None, "override")
    again = events.review_event(action="decided", previous_audit_hash="ab12", **decided, **common)
    assert again["event_id"] == dec["event_id"]
    with pytest.raises(ValueError, match="review action"):
        events.review_event(
            action="nope",  # type: ignore[arg-type]
            reviewer=None,
            outcome=None,
            previous_audit_hash=None,
            **common,
        )
    # A verdict belongs to a decided step, and to it alone.
    for action, verdict in (("decided", None), ("claimed", "approve"), ("decided", "maybe")):
        with pytest.raises(ValueError, match="verdict"):
            events.review_event(
                action=action,  # type: ignore[arg-type]
                reviewer="ana",
                outcome=None,
                previous_audit_hash="ab12",
                verdict=verdict,  # type: ignore[arg-type]
                **common,
            )


def test_gap_event_validates() -> None:
    body = events.gap_event(
        reason="queue_full",
        by_kind={"decision": 2, "review": 1},
        first_time=1,
        last_time=2,
        decision_ids=["r/0", "r/1"],
    )
    validate_event(body)
    assert body["dropped"] == 3 and body["decision_ids_complete"]
    partial = events.gap_event(
        reason="spool_full", by_kind={"decision": 5}, first_time=1, last_time=2, decision_ids=["a"]
    )
    assert not partial["decision_ids_complete"]
    with pytest.raises(ValueError, match="gap reason"):
        events.gap_event(reason="bored", by_kind={"decision": 1}, first_time=1, last_time=1)


def test_schema_refuses_a_wrong_event(decision: Decision) -> None:
    body = events.decision_event(decision)
    body["confidence"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        validate_event(body)
    body = events.decision_event(decision)
    body["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_event(body)


def test_numpy_values_serialise() -> None:
    import numpy as np

    d = make_decision(features=[np.float32(1.5), np.int64(3)], probabilities=None)
    body = events.decision_event(d)
    assert events.dumps(body).count(b"1.5") == 1


def test_bodies_serialise_the_same_on_the_fast_path_and_keys_that_are_not_strings_still_do(
    decision: Decision,
) -> None:
    body = events.decision_event(decision)
    both = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    assert events.dumps(body) == orjson.dumps(body, option=both)
    # An explanation's detail keyed by class index, say: written with its key as a string.
    body = {"event_type": "explanation", "fidelity_detail": {1: 0.5, "x": [1]}}
    assert orjson.loads(events.dumps(body)) == {
        "event_type": "explanation",
        "fidelity_detail": {"1": 0.5, "x": [1]},
    }
