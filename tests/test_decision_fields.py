"""Every place a decision's fields live agrees with `Decision` (sidecar/decisions.py).

A decision travels as the decision event (and its JSON Schema), the lookup store's
packed entry, the control plane's and the review queue's dict, the review API's
`DecisionOut` and what the console shows. The round trip below sets every field and
follows one decision through all of them; `misplaced` names each place a field is
missing from, so a field added in one place only fails here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.control.lookup import Explanations, decision_from_dict
from sidecar.control.store import DecisionStore, pack
from sidecar.decisions import DECISION_FIELDS, Decision, field_values, from_values
from sidecar.metrics import Registry
from sidecar.review.model import decision_to_dict
from sidecar.review.schemas import DecisionOut, decision_out
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks import events
from sidecar.sinks.files import FileSink
from tests.eventlib import validate_event

CONSOLE_JS = Path(__file__).resolve().parents[1] / "sidecar" / "review" / "static" / "console.js"
DECISION_SCHEMA: dict[str, Any] = json.loads(
    resources.files("sidecar.schemas").joinpath("decision.v1.json").read_text()
)

# Keys of the decision event that are not Decision fields: what names the event, what
# is derived from the decision, and the model's constants (class labels, rule).
EVENT_ONLY = {
    "event_type",
    "schema_version",
    "event_id",
    "decision_id",
    "features_hash",
    *events.DECISION_EVENT_MODEL_KEYS,
}
# Decision fields the review API's DecisionOut (sidecar/review/schemas.py) leaves out.
API_LEFT_OUT = {"sample_reason", "explain_requested"}
# Decision fields the console's decision view does not show. The row's id is the item id
# in the title, and the routing reason comes from the review item, not the decision.
CONSOLE_HIDDEN = {
    "call_id",
    "request_id",
    "row",
    "protocol",
    "upstream_status",
    "upstream_latency_ms",
    "review",
    "review_reason",
    "sampled",
    "sample_reason",
    "explain_requested",
}


def full_decision() -> Decision:
    """A decision with every field set, none to its default, each value JSON-exact."""
    return Decision(
        call_id="call-fields",
        request_id="req-fields",
        row=3,
        time=1795392000.25,
        protocol="kserve_v1",
        model_name="credit",
        model_version="7",
        features=[35.0, 52000.0, 0.31, 2],
        feature_names=["age", "income", "debt_ratio", "accounts"],
        prediction="deny",
        probabilities=[0.45, 0.55],
        confidence=0.55,
        upstream_status=201,
        upstream_latency_ms=3.5,
        group_attributes={"gender": "F", "age_band": "hmac-sha256:ab12"},
        review="held",
        review_reason="confidence<0.6",
        sampled=True,
        sample_reason="rate",
        explain_requested=True,
    )


def decision_from_event(body: dict[str, Any]) -> Decision:
    """The inverse of `decision_event` (full features policy), by the event mapping."""
    values = {name: body[key] for name, key in events.DECISION_EVENT_KEYS.items()}
    values["time"] = datetime.fromisoformat(body["time"].replace("Z", "+00:00")).timestamp()
    return Decision(**values)


def console_reads() -> set[str]:
    """The decision fields console.js reads: `X.decision.f`, and `d.f` where `const d = X.decision`."""
    source = CONSOLE_JS.read_text()
    reads = set(re.findall(r"\.decision\.(\w+)", source))
    # One function at a time, so an alias is only followed where it was made.
    for chunk in re.split(r"\n(?=(?:async )?function )", source):
        for alias in re.findall(r"const (\w+) = \w+\.decision;", chunk):
            reads |= set(re.findall(rf"\b{alias}\.(\w+)", chunk))
    return reads


def misplaced(fields: set[str]) -> list[str]:
    """Each place that does not account for exactly these Decision fields, named."""
    problems: list[str] = []

    def differ(place: str, has: set[str], expected: set[str]) -> None:
        if has != expected:
            missing, extra = sorted(expected - has), sorted(has - expected)
            problems.append(f"{place}: missing {missing}, not fields {extra}")

    mapped = set(events.DECISION_EVENT_KEYS)
    differ(
        "sinks/events.py DECISION_EVENT_KEYS + DECISION_EVENT_LEFT_OUT",
        mapped | events.DECISION_EVENT_LEFT_OUT,
        fields,
    )
    if mapped & events.DECISION_EVENT_LEFT_OUT:
        problems.append(
            f"both mapped and left out: {sorted(mapped & events.DECISION_EVENT_LEFT_OUT)}"
        )
    schema_keys = set(DECISION_SCHEMA["properties"])
    event_keys = {
        events.DECISION_EVENT_KEYS.get(name, name)
        for name in fields - events.DECISION_EVENT_LEFT_OUT
    }
    differ("schemas/decision.v1.json properties", schema_keys - EVENT_ONLY, event_keys)
    differ("schemas/decision.v1.json required", set(DECISION_SCHEMA["required"]), schema_keys)
    differ(
        "review/schemas.py DecisionOut (+ API_LEFT_OUT here)",
        (set(DecisionOut.model_fields) - {"decision_id"}) | API_LEFT_OUT,
        fields,
    )
    shown = console_reads()
    differ("review/static/console.js reads (+ CONSOLE_HIDDEN here)", shown | CONSOLE_HIDDEN, fields)
    if shown & CONSOLE_HIDDEN:
        problems.append(f"console shows fields listed as hidden: {sorted(shown & CONSOLE_HIDDEN)}")
    return problems


def test_the_sample_sets_every_field_off_its_default() -> None:
    # A field left at its default (or empty) would pass a round trip that dropped it.
    d = full_decision()
    for f in dataclasses.fields(Decision):
        value = getattr(d, f.name)
        assert value, f.name
        if f.default is not dataclasses.MISSING:
            assert value != f.default, f.name
        if f.default_factory is not dataclasses.MISSING:
            assert value != f.default_factory(), f.name


def test_one_decision_round_trips_through_every_place_unchanged(tmp_path: Path) -> None:
    d = full_decision()

    body = events.decision_event(d)
    validate_event(body)  # decision.v1.json, after a JSON round trip
    assert set(body) == set(DECISION_SCHEMA["properties"])
    assert decision_from_event(orjson.loads(events.dumps(body))) == d
    assert body["decision_id"] == "call-fields/3"
    assert body["features_hash"] == events.features_hash(d.features)
    hashed = events.decision_event(d, features="hash")
    validate_event(hashed)
    assert hashed["features"] is None
    assert {k: v for k, v in hashed.items() if k != "features"} == {
        k: v for k, v in body.items() if k != "features"
    }

    registry = Registry()
    decisions = DecisionStore(10, registry)
    decisions.add([d])
    assert orjson.loads(pack(d)) == [getattr(d, name) for name in DECISION_FIELDS]
    stored = decisions.get("call-fields/3")
    assert stored == d and stored is not d

    sink = FileSink(
        tmp_path / "events",
        {"decision": "d", "explanation": "e", "review": "r"},
        registry,
        rotate_bytes=1 << 20,
        rotate_interval_s=3600,
        keep_files=2,
    )
    sink.start()
    review = SqliteReviewStore(tmp_path / "review.db", sink=sink, registry=registry)
    try:
        lookup = Explanations(
            store=review, decisions=decisions, explain_now=None, cache_size=0, registry=registry
        )
        found = lookup.find("call-fields/3")
        assert found is not None
        as_dict, item = found
        assert item is None
        assert as_dict == {
            **{name: getattr(d, name) for name in DECISION_FIELDS},
            "decision_id": "call-fields/3",
        }
        assert decision_from_dict(as_dict) == d

        # The review queue keeps its own copy (JSON in SQLite); a lookup falls back to it.
        assert review.enqueue(d) is not None
        queued = Explanations(
            store=review, decisions=None, explain_now=None, cache_size=0, registry=registry
        ).find("call-fields/3")
        assert queued is not None and queued[1] is not None
        assert queued[0] == as_dict
        assert decision_from_dict(queued[0]) == d

        # What the review API answers with: every field it has, as the dict has it.
        out = decision_out(as_dict, show_groups=True).model_dump()
        assert out == {k: v for k, v in as_dict.items() if k not in API_LEFT_OUT}
    finally:
        review.close()
        sink.close()


def test_the_store_rebuilds_a_decision_by_its_field_names() -> None:
    d = full_decision()
    rebuilt = from_values(field_values(d))
    assert rebuilt == d and rebuilt is not d
    assert [getattr(rebuilt, name) for name in DECISION_FIELDS] == list(field_values(d))
    # from_values sets the slots and skips __init__ (as pickle does): a __post_init__
    # added to Decision would be skipped too, so it must be given the same step.
    assert not hasattr(Decision, "__post_init__")


def test_every_field_has_its_place_everywhere() -> None:
    problems = misplaced(set(DECISION_FIELDS))
    assert not problems, "\n".join(problems)


def test_a_field_added_to_decision_only_is_named_in_each_place_it_lacks() -> None:
    problems = misplaced({*DECISION_FIELDS, "risk_band"})
    places = [p.split(":")[0] for p in problems]
    assert places == [
        "sinks/events.py DECISION_EVENT_KEYS + DECISION_EVENT_LEFT_OUT",
        "schemas/decision.v1.json properties",
        "review/schemas.py DecisionOut (+ API_LEFT_OUT here)",
        "review/static/console.js reads (+ CONSOLE_HIDDEN here)",
    ]
    assert all("missing ['risk_band']" in p for p in problems)


def test_a_field_dropped_from_decision_is_named_where_it_lingers() -> None:
    problems = misplaced(set(DECISION_FIELDS) - {"confidence"})
    assert len(problems) == 4
    assert all("not fields ['confidence']" in p for p in problems)


def test_the_console_reads_only_fields_the_decision_dicts_have() -> None:
    shown = console_reads()
    assert {"prediction", "features", "group_attributes"} <= shown  # the parse found the view
    assert shown <= set(decision_to_dict(full_decision()))
    assert shown <= set(DecisionOut.model_fields)


@pytest.mark.parametrize("name", DECISION_FIELDS)
def test_decision_from_dict_takes_each_field_by_name(name: str) -> None:
    d = full_decision()
    as_dict = decision_to_dict(d)
    assert getattr(decision_from_dict(as_dict), name) == getattr(d, name)
    # A dict from before a defaulted field existed still reads back, with the default.
    field = Decision.__dataclass_fields__[name]
    if field.default is not dataclasses.MISSING:
        del as_dict[name]
        assert getattr(decision_from_dict(as_dict), name) == field.default
