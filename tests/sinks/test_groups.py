from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.dataplane.groups import HASH_PREFIX, GroupExtractor
from sidecar.metrics import Registry


def extractor(reg: Registry | None = None, **groups: Any) -> GroupExtractor:
    settings = load_settings(environ={}, overrides={"groups": groups})
    return GroupExtractor(settings.groups, reg or Registry())


def test_header_is_parsed() -> None:
    ex = extractor()
    hdrs = [(b"host", b"x"), (b"x-group-attributes", b"gender=F; age_band=30-39")]
    assert ex.from_request(hdrs, None, None) == {"gender": "F", "age_band": "30-39"}
    assert ex.from_request({b"x-group-attributes": b"gender=M"}, None, None) == {"gender": "M"}
    assert ex.from_request([], None, None) == {}


def test_malformed_parts_are_ignored_and_counted() -> None:
    reg = Registry()
    ex = extractor(reg, max_value_chars=8)
    raw = b"gender=F;;novalue; =x; 9bad=1; long=123456789; ok = yes ;empty="
    assert ex.from_request([(b"x-group-attributes", raw)], None, None) == {
        "gender": "F",
        "ok": "yes",
    }
    assert "sidecar_group_attributes_malformed_total 5" in reg.render()
    assert ex.from_request([(b"x-group-attributes", b"\xff\xfe=\x00")], None, None) == {}


def test_a_repeated_header_counts_every_time_and_hands_out_its_own_dict() -> None:
    reg = Registry()
    ex = extractor(reg, privacy={"gender": "hash", "zip": "drop"}, hash_key="k")
    hdrs = [(b"x-group-attributes", b"gender=F; zip=123; ;bad")]
    first = ex.from_request(hdrs, None, None)
    assert first["gender"].startswith(HASH_PREFIX) and "zip" not in first
    first["gender"] = "changed"
    second = ex.from_request(hdrs, None, None)
    assert second["gender"].startswith(HASH_PREFIX)
    text = reg.render()
    assert "sidecar_group_attributes_malformed_total 2" in text
    assert "sidecar_group_attributes_dropped_total 2" in text


def test_allowed_names_and_limit() -> None:
    reg = Registry()
    ex = extractor(reg, allowed=["gender", "region"], max_attributes=1)
    got = ex.from_request([(b"x-group-attributes", b"gender=F; region=N; other=1")], None, None)
    assert got == {"gender": "F"}
    assert "sidecar_group_attributes_malformed_total 2" in reg.render()


def test_body_field_is_taken_out_and_parsed() -> None:
    ex = extractor()
    body = {"inputs": [], "parameters": {"group_attributes": {"gender": "F", "age": 41}, "k": 1}}
    value = ex.take_body_field(body)
    assert body == {"inputs": [], "parameters": {"k": 1}}
    assert ex.from_request([], value, None) == {"gender": "F", "age": "41"}
    assert ex.from_request([], "region=EU; x", None) == {"region": "EU"}
    assert ex.take_body_field({"inputs": []}) is None
    assert ex.take_body_field({"parameters": "nope"}) is None
    assert extractor(body_field="").take_body_field(body) is None


def test_header_overrides_body_overrides_derived() -> None:
    ex = extractor(derive={"gender": {"feature": "sex", "map": {"0": "F", "1": "M"}}})
    feats = {"sex": 1.0}
    assert ex.from_request([], None, feats) == {"gender": "M"}
    assert ex.from_request([], {"gender": "X"}, feats) == {"gender": "X"}
    hdr = [(b"x-group-attributes", b"gender=Y")]
    assert ex.from_request(hdr, {"gender": "X"}, feats) == {"gender": "Y"}


def test_derived_bands() -> None:
    ex = extractor(
        derive={
            "age_band": {"feature": "age", "bins": [0, 25, 35, 45, 55, 65]},
            "income_band": {"feature": "income", "bins": [0, 30000], "labels": ["low", "high"]},
            "region": {"feature": "region"},
        }
    )
    f = ex.from_request
    assert f([], None, {"age": 41.5, "income": 52000, "region": "north"}) == {
        "age_band": "35-45",
        "income_band": "high",
        "region": "north",
    }
    assert f([], None, {"age": 70})["age_band"] == "65+"
    assert f([], None, {"age": 25})["age_band"] == "25-35"
    assert f([], None, {"age": -1})["age_band"] == "<0"
    assert f([], None, {"age": "33"})["age_band"] == "25-35"
    assert f([], None, {"age": "n/a"}) == {}
    assert f([], None, {"age": float("nan")}) == {}


def test_privacy_keep_hash_drop() -> None:
    reg = Registry()
    ex = extractor(
        reg,
        privacy={"gender": "hash", "zip": "drop"},
        default_privacy="keep",
        hash_key="s3cret",
    )
    got = ex.from_request(
        [(b"x-group-attributes", b"gender=F; zip=10115; age_band=30-39")], None, None
    )
    want = hmac.new(b"s3cret", b"F", hashlib.sha256).hexdigest()[:32]
    assert got == {"gender": HASH_PREFIX + want, "age_band": "30-39"}
    assert "sidecar_group_attributes_dropped_total 1" in reg.render()
    # Applying the policy again changes nothing (hashes are not hashed twice).
    assert ex.apply_privacy(got) == got


def test_hash_policy_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="hash_key"):
        load_settings(environ={}, overrides={"groups": {"default_privacy": "hash"}})
    with pytest.raises(ConfigError, match=r"groups\.derive"):
        load_settings(
            environ={},
            overrides={"groups": {"derive": {"a": {"feature": "x", "bins": [2, 1]}}}},
        )
    with pytest.raises(ConfigError, match="labels"):
        load_settings(
            environ={},
            overrides={
                "groups": {"derive": {"a": {"feature": "x", "bins": [1, 2], "labels": ["a"]}}}
            },
        )
