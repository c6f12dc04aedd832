"""Principal reasons on the demo credit model: by hand, by re-scoring, and what never shows."""

from __future__ import annotations

import numpy as np

from sidecar.demo.data import generate
from tests.people.people_helpers import ADMIN, AUDITOR, CASE, FEATURES, REVIEWER, Made, Runtime

AGE = FEATURES.index("age")
# A dense grid over each feature's range in the demo data: independent of the split thresholds
# the reasons' directions are read from.
_DATA = generate(4000, seed=99).features
GRID = {
    j: np.linspace(np.nanmin(_DATA[:, j]), np.nanmax(_DATA[:, j]), 600)
    for j in range(len(FEATURES))
}


def test_reasons_match_a_by_hand_computation_from_the_lookup(made: Made) -> None:
    for i in made.denied[:8]:
        status, lookup, _ = made.get(f"/decisions/{made.id(i)}", REVIEWER)
        assert status == 200
        explanation = lookup["explanation"]
        # The demo model scores "default" (the unfavourable class): a positive contribution
        # pushes toward the unfavourable outcome. age is excluded (age_band derives from it).
        push = explanation["contributions"][0]
        by_hand = sorted(
            (j for j in range(len(FEATURES)) if push[j] > 0 and j != AGE),
            key=lambda j: -push[j],
        )[:3]
        status, body, _ = made.get(f"/decisions/{made.id(i)}/reasons", CASE)
        assert status == 200, body
        assert body["outcome"] == "default" and body["favourable"] is False
        assert body["contribution_space"] == "margin"
        assert [r["feature"] for r in body["reasons"]] == [FEATURES[j] for j in by_hand]
        assert [r["contribution"] for r in body["reasons"]] == [push[j] for j in by_hand]
        # The person's value as the model read it (float32), in its shortest decimal.
        assert [r["value"] for r in body["reasons"]] == [
            None if made.rows[i][j] is None else float(str(np.float32(made.rows[i][j])))
            for j in by_hand
        ]
        # The lookup carries the same reasons.
        assert lookup["reasons"]["reasons"] == body["reasons"]


def test_reasons_point_the_right_way_when_re_scored(made: Made) -> None:
    runtime = Runtime()
    checked = 0
    for i in made.denied:
        status, body, _ = made.get(f"/decisions/{made.id(i)}/reasons", CASE)
        assert status == 200
        for r in body["reasons"]:
            if r["direction"] is None or r["value"] is None:
                continue
            j = FEATURES.index(r["feature"])
            x = made.rows[i][j]
            assert x is not None
            # "up": the value is too high. So some lower value scores better, and raising the
            # feature from there to the person's value lowers the approval probability.
            grid = GRID[j][GRID[j] < x] if r["direction"] == "up" else GRID[j][GRID[j] > x]
            rows = [made.rows[i]] + [
                [*made.rows[i][:j], float(v), *made.rows[i][j + 1 :]] for v in grid
            ]
            approval = runtime.approval(rows)
            assert approval[1:].max() > approval[0], (r, x)
            assert r["text_source"] == "catalogue"
            checked += 1
    assert checked >= 10


def test_no_group_attribute_or_excluded_feature_is_ever_a_reason(made: Made) -> None:
    seen = set()
    for i in made.denied:
        _, body, _ = made.get(f"/decisions/{made.id(i)}/reasons", CASE)
        seen |= {r["feature"] for r in body["reasons"]}
        assert "age" not in seen
        assert not {"age_band", "gender"} & seen
    assert len(seen) >= 3


def test_a_favourable_decision_has_no_reasons_and_says_so(made: Made) -> None:
    i = made.approved[0]
    status, body, _ = made.get(f"/decisions/{made.id(i)}/reasons", CASE)
    assert status == 200
    assert body["favourable"] is True and body["outcome"] == "repaid"
    assert body["reasons"] == []
    assert "favourable" in body["note"]


def test_roles_and_unknown_decisions(made: Made) -> None:
    i = made.denied[0]
    for token in (CASE, REVIEWER, AUDITOR, ADMIN):
        assert made.get(f"/decisions/{made.id(i)}/reasons", token)[0] == 200
    assert made.get(f"/decisions/{made.id(i)}/reasons", "not-a-known-token-at-all")[0] == 401
    # A case handler reads reasons, never the lookup with its group attributes.
    assert made.get(f"/decisions/{made.id(i)}", CASE)[0] == 403
    assert made.get(f"/decisions/{made.id(i)}/plot", CASE)[0] == 403
    assert made.get(f"/decisions/{made.call_id}/9999/reasons", CASE)[0] == 404
    assert made.get(f"/decisions/{made.call_id}/reasons?extra=1", CASE)[0] == 422
    # Row 0 by the call id alone, as the lookup does.
    assert made.get(f"/decisions/{made.call_id}/reasons", CASE)[1]["decision_id"] == made.id(0)
