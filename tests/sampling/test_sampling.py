from __future__ import annotations

import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.decisions import Decision
from sidecar.pipeline.sampling import Sampler, unit_hash


def _decision(
    rid: str, row: int = 0, confidence: float | None = 0.9, groups: dict[str, str] | None = None
) -> Decision:
    return Decision(
        call_id=rid,
        row=row,
        time=0.0,
        protocol="v2",
        model_name="m",
        model_version="1",
        features=[1.0],
        feature_names=["a"],
        prediction=1,
        probabilities=[0.1, 0.9],
        confidence=confidence,
        upstream_status=200,
        upstream_latency_ms=1.0,
        group_attributes=groups or {},
    )


def _sampler(**sampling: object) -> Sampler:
    return Sampler(load_settings(environ={}, overrides={"sampling": sampling}).sampling)


def test_rate_is_deterministic_and_close_to_the_configured_rate() -> None:
    s = _sampler(rate=0.25, low_confidence_below=None)
    ds = [_decision(f"req{i}") for i in range(20_000)]
    first = [s.choose(d, False) for d in ds]
    assert first == [_sampler(rate=0.25, low_confidence_below=None).choose(d, False) for d in ds]
    share = sum(r == "rate" for r in first) / len(ds)
    assert 0.23 < share < 0.27
    assert set(first) == {"rate", None}


def test_rate_extremes() -> None:
    ds = [_decision(f"r{i}") for i in range(500)]
    assert all(_sampler(rate=0.0, low_confidence_below=None).choose(d, False) is None for d in ds)
    assert all(_sampler(rate=1.0).choose(d, False) == "rate" for d in ds)


def test_rules_take_precedence() -> None:
    s = _sampler(rate=0.0, low_confidence_below=0.6)
    assert s.choose(_decision("a", confidence=0.55), False) == "low_confidence"
    assert s.choose(_decision("a", confidence=0.65), False) is None
    assert s.choose(_decision("a", confidence=None), False) is None
    assert s.choose(_decision("a", confidence=0.55), True) == "requested"


def test_group_rates() -> None:
    s = _sampler(
        rate=0.0, low_confidence_below=None, group_rates={"gender=F": 0.5, "age_band=70+": 1.0}
    )
    females = [_decision(f"f{i}", groups={"gender": "F"}) for i in range(4000)]
    share = sum(s.choose(d, False) == "group:gender=F" for d in females) / len(females)
    assert 0.45 < share < 0.55
    assert s.choose(_decision("x", groups={"gender": "M"}), False) is None
    both = _decision("y", groups={"gender": "F", "age_band": "70+"})
    assert s.choose(both, False) == "group:age_band=70+"


def test_select_marks_decisions() -> None:
    s = _sampler(rate=0.0, low_confidence_below=0.6)
    ds = [_decision("a", 0, 0.3), _decision("a", 1, 0.9)]
    chosen = s.select(ds, explain_requested=False)
    assert chosen == [ds[0]] and ds[0].sampled and ds[0].sample_reason == "low_confidence"
    assert not ds[1].sampled
    assert [d.sample_reason for d in s.select(ds, explain_requested=True)] == ["requested"] * 2
    assert ds[1].explain_requested


def test_unit_hash_range_and_bad_config() -> None:
    assert all(0.0 <= unit_hash(f"id{i}") < 1.0 for i in range(1000))
    with pytest.raises(ConfigError, match=r"sampling\.group_rates"):
        load_settings(environ={}, overrides={"sampling": {"group_rates": {"gender": 0.5}}})
    with pytest.raises(ConfigError, match=r"sampling\.rate"):
        load_settings(environ={}, overrides={"sampling": {"rate": 1.5}})
