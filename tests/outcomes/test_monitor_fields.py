"""What a fairness monitor needs in every decision event: labels, the favourable one, the rule, flat groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.dataplane.groups import GroupExtractor
from sidecar.metrics import Registry
from sidecar.sinks import events
from sidecar.sinks.events import ModelFacts
from tests.eventlib import make_decision, validate_event
from tests.outcomes.helpers import LABELS, MODEL, infer, read_events, v2_model
from tests.servers import running_sidecar


def test_without_model_settings_the_event_says_argmax_and_nulls() -> None:
    body = events.decision_event(make_decision())
    validate_event(body)
    assert body["class_labels"] is None
    assert body["favourable_label"] is None
    assert body["decision_rule"] == {"kind": "argmax"}


def test_labels_favourable_label_and_a_threshold_rule_are_in_the_event() -> None:
    facts = ModelFacts.of(LABELS, "repaid", 0.35, "default")
    body = orjson.loads(events.dumps(events.decision_event(make_decision(), "hash", facts)))
    validate_event(body)
    assert body["class_labels"] == LABELS
    assert body["favourable_label"] == "repaid"
    assert body["decision_rule"] == {"kind": "threshold", "label": "default", "threshold": 0.35}
    # Without a label the threshold applies to the last class (a binary model's positive one).
    assert ModelFacts.of(LABELS, None, 0.5).decision_rule["label"] == "repaid"
    with pytest.raises(ValueError, match="needs class labels"):
        ModelFacts.of([], None, 0.5)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"decision_threshold": 0.5}, "decision_threshold needs class_labels"),
        ({**MODEL, "decision_threshold": 1.5}, "model.decision_threshold"),
        (
            {**MODEL, "decision_threshold": 0.5, "decision_threshold_label": "x"},
            "decision_threshold_label",
        ),
    ],
)
def test_a_bad_decision_rule_fails_at_start_naming_the_key(model: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match="model") as err:
        load_settings(environ={}, overrides={"model": model})
    assert key in str(err.value)


def extractor(**groups: Any) -> tuple[GroupExtractor, Registry]:
    reg = Registry()
    settings = load_settings(environ={}, overrides={"groups": groups})
    return GroupExtractor(settings.groups, reg), reg


def malformed(reg: Registry) -> float:
    return reg.counter("sidecar_group_attributes_malformed_total", "").value


def test_nested_group_attributes_become_dotted_names() -> None:
    g, reg = extractor()
    body = {"applicant": {"gender": "F", "age": {"band": "30-39"}}, "region": "north"}
    attrs = g.from_request({}, body, None)
    assert attrs == {"applicant.gender": "F", "applicant.age.band": "30-39", "region": "north"}
    assert malformed(reg) == 0


def test_flattened_names_meet_the_same_limits_as_flat_ones() -> None:
    g, reg = extractor(allowed=["applicant.gender", "a.b.c.d"], max_attributes=16)
    # Four levels are flattened; a fifth is ignored and counted, as is a name not allowed.
    body = {
        "applicant": {"gender": "F", "zip": "123"},
        "a": {"b": {"c": {"d": "4", "e": {"f": "5"}}}},
    }
    assert g.from_request({}, body, None) == {"applicant.gender": "F", "a.b.c.d": "4"}
    assert malformed(reg) == 2
    g, reg = extractor(max_attributes=2)
    assert len(g.from_request({}, {"x": {"a": "1", "b": "2", "c": "3"}}, None)) == 2
    assert malformed(reg) == 1
    g, reg = extractor(privacy={"applicant.gender": "drop"})
    assert g.from_request({}, {"applicant": {"gender": "F", "age": "41"}}, None) == {
        "applicant.age": "41"
    }


def test_decision_events_from_the_files_sink_carry_the_monitor_fields(tmp_path: Path) -> None:
    with (
        v2_model() as up,
        running_sidecar(
            up.url,
            model={**MODEL, "decision_threshold": 0.6, "decision_threshold_label": "default"},
        ) as svc,
    ):
        call_id = infer(svc, rows=2, groups={"applicant": {"gender": "F"}, "region": "north"})
        assert svc.pipeline.drain(5)
        found = read_events(svc.settings.sink.directory, svc.settings.kafka.topic_decisions)
    assert [e["decision_id"] for e in found] == [f"{call_id}/0", f"{call_id}/1"]
    for e in found:
        validate_event(e)
        assert e["class_labels"] == LABELS
        assert e["favourable_label"] == "repaid"
        assert e["decision_rule"] == {"kind": "threshold", "label": "default", "threshold": 0.6}
        assert e["group_attributes"] == {"applicant.gender": "F", "region": "north"}
