"""Routing rules: each rule, their order, deterministic samples, and the hot-path cost."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.pipeline.routing import ReviewRouter
from tests.review.review_helpers import make_decision


def router(**review: Any) -> ReviewRouter:
    return ReviewRouter(load_settings(environ={}, overrides={"review": review}).review)


def decision(rid: str = "r", confidence: float = 0.9, **kw: Any) -> Any:
    return make_decision(rid, confidence=confidence, review=None, reason=None, **kw)


def test_low_confidence_goes_to_review_and_confident_does_not() -> None:
    r = router(confidence_below=0.6)
    assert r.route(decision(confidence=0.59), False) == "low_confidence"
    assert r.route(decision(confidence=0.6), False) is None
    assert router(confidence_below=None).route(decision(confidence=0.1), False) is None


def test_a_score_inside_the_band_goes_to_review() -> None:
    r = router(confidence_below=None, band=[0.4, 0.6])
    # make_decision's score (positive-class probability) is its confidence.
    assert r.route(decision(confidence=0.45), False) == "band"
    assert r.route(decision(confidence=0.61), False) is None
    d = decision()
    d.probabilities, d.prediction = None, 0.5  # a regression score
    assert r.route(d, False) == "band"


def test_the_review_header_asks_for_review() -> None:
    r = router(header="X-Please-Review")
    assert r.header_name == b"x-please-review"
    assert r.route(decision(), True) == "requested"
    assert ReviewRouter.wants_review(b"true") and ReviewRouter.wants_review("1")
    assert not ReviewRouter.wants_review(b"0") and not ReviewRouter.wants_review(None)


def test_group_rules_always_or_at_a_rate() -> None:
    r = router(group_rules={"age_band=18-24": True, "gender=F": 0.5})
    young = decision(groups={"age_band": "18-24"})
    assert r.route(young, False) == "group:age_band=18-24"
    assert r.route(decision(groups={"age_band": "40-49"}), False) is None
    hits = sum(
        r.route(decision(f"g{i}", groups={"gender": "F"}), False) == "group:gender=F"
        for i in range(4000)
    )
    assert 1800 < hits < 2200
    assert (
        router(group_rules={"gender=F": False}).route(decision(groups={"gender": "F"}), False)
        is None
    )


def test_the_audit_sample_is_deterministic_by_decision_id() -> None:
    r = router(audit_rate=0.1)
    picked = [r.route(decision(f"a{i}"), False) == "audit_sample" for i in range(10_000)]
    assert 900 < sum(picked) < 1100
    r2 = router(audit_rate=0.1)
    again = [r2.route(decision(f"a{i}"), False) == "audit_sample" for i in range(10_000)]
    assert picked == again
    assert router().route(decision("a1"), False) is None  # default rate 0


def test_rules_apply_in_order_and_can_be_switched_off() -> None:
    r = router(band=[0.0, 1.0], audit_rate=1.0, group_rules={"gender=F": True})
    assert r.route(decision(confidence=0.2), True) == "requested"
    assert r.route(decision(confidence=0.2), False) == "low_confidence"
    assert r.route(decision(confidence=0.9), False) == "band"
    assert router(enabled=False).route(decision(confidence=0.1), True) is None
    assert router(mode="hold").status == "held" and router().status == "queued"


@pytest.mark.parametrize(
    ("review", "key"),
    [
        ({"band": [0.7, 0.2]}, "review.band"),
        ({"group_rules": {"age_band": True}}, "review.group_rules"),
        ({"group_rules": {"gender=F": 1.5}}, "review.group_rules"),
        ({"mode": "block"}, "review.mode"),
        ({"audit_rate": 2}, "review.audit_rate"),
        ({"header": "x review"}, "review.header"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(review: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(environ={}, overrides={"review": review})
