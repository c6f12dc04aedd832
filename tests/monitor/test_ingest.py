"""Joining and de-duplication details, the intervals against published values, the bench's shape."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.bench_monitor import run as bench_run
from sidecar.monitor.figures import Options, group_figures
from sidecar.monitor.ingest import Ingest
from sidecar.monitor.intervals import katz_ratio, newcombe, wilson, z_for
from sidecar.monitor.state import ALL, FN, FP, TN, TP, State
from tests.monitor.gen import FEATURES, LABELS

Z = z_for(0.95)


def test_intervals_match_published_examples() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II: 56/70 - 48/80.
    lo, hi = newcombe(56, 70, 48, 80, Z)  # type: ignore[misc]
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    # Newcombe (1998) table I, Wilson score for 81/263.
    lo, hi = wilson(81, 263, Z)  # type: ignore[misc]
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = katz_ratio(10, 100, 20, 100, Z)  # type: ignore[misc]
    assert lo == pytest.approx(0.5 * 2.718281828459045 ** (-Z * (0.9 / 10 + 0.8 / 20) ** 0.5))
    assert hi == pytest.approx(0.5 * 2.718281828459045 ** (Z * (0.9 / 10 + 0.8 / 20) ** 0.5))
    # A zero count: 0.5 added to each cell, so the interval exists and lies low.
    lo, hi = katz_ratio(0, 40, 20, 40, Z)  # type: ignore[misc]
    p1, p2 = 0.5 / 41, 20.5 / 41
    se = ((1 - p1) / 0.5 + (1 - p2) / 20.5) ** 0.5
    assert hi == pytest.approx(p1 / p2 * 2.718281828459045 ** (Z * se)) and hi < 0.8
    assert katz_ratio(0, 0, 5, 10, Z) is None and wilson(0, 0, Z) is None


def _ingest(**kw: Any) -> Ingest:
    return Ingest(
        State(feature_names=list(FEATURES), edges=[]),
        window_s=86_400,
        class_labels=LABELS,
        favourable_label="repaid",
        **kw,
    )


def _decision(did: str, **kw: Any) -> dict[str, Any]:
    return {
        "event_type": "decision",
        "decision_id": did,
        "time": "2026-11-23T10:00:00.000000Z",
        "prediction": 1,
        "probabilities": [0.3, 0.7],
        "group_attributes": {"gender": "F"},
        **kw,
    }


def _outcome(did: str, outcome: str, observed: str, eid: str) -> dict[str, Any]:
    return {
        "event_type": "outcome",
        "event_id": eid,
        "decision_id": did,
        "outcome": outcome,
        "observed_at": observed,
    }


def _cells(ing: Ingest) -> list[float]:
    st = ing.snapshot()
    c = st.windows[next(iter(st.windows))].groups[ALL]
    return [c[TP], c[FP], c[FN], c[TN]]


def test_a_later_outcome_replaces_an_earlier_one_and_repeats_are_ignored() -> None:
    ing = _ingest()
    ing.feed([_decision("d/0")])
    ing.feed([_outcome("d/0", "default", "2026-12-01T00:00:00Z", "o1")])
    assert _cells(ing) == [0, 1, 0, 0]
    ing.feed([_outcome("d/0", "default", "2026-12-01T00:00:00Z", "o1")])  # redelivered
    ing.feed([_outcome("d/0", "repaid", "2026-12-20T00:00:00Z", "o2")])  # corrected later
    assert _cells(ing) == [1, 0, 0, 0]
    ing.feed([_outcome("d/0", "default", "2026-11-30T00:00:00Z", "o3")])  # older: not taken
    assert _cells(ing) == [1, 0, 0, 0]
    t = ing.state.traffic
    assert (t["outcomes"], t["outcomes_replaced"], t["duplicates"]) == (1, 2, 1)


def test_an_outcome_before_its_decision_waits_and_an_orphan_is_reported() -> None:
    ing = _ingest()
    ing.feed([_outcome("d/0", "repaid", "2026-12-01T00:00:00Z", "o1")])
    ing.feed([_outcome("never/0", "repaid", "2026-12-01T00:00:00Z", "o2")])
    ing.feed([_decision("d/0"), _decision("d/0")])
    assert _cells(ing) == [1, 0, 0, 0]
    assert ing.snapshot().pending["outcomes"] == 1 and ing.waiting_outcomes() == ["never/0"]
    assert ing.state.traffic["duplicates"] == 1


def test_labels_rule_and_fallbacks() -> None:
    ing = _ingest()
    ing.feed(
        [
            # No prediction: the threshold rule decides from the probabilities.
            _decision(
                "a/0",
                prediction=None,
                probabilities=[0.45, 0.55],
                decision_rule={"kind": "threshold", "label": "repaid", "threshold": 0.6},
            ),
            _decision("b/0", prediction="repaid"),
            _decision("c/0", prediction=None, probabilities=[0.2, 0.8]),  # argmax
            _decision("d/0", favourable_label=None, class_labels=None),  # config's labels
            _decision("e/0", prediction={"odd": 1}, probabilities=None),  # unreadable
        ]
    )
    st = ing.snapshot()
    c = st.windows[next(iter(st.windows))].groups[ALL]
    fig = group_figures(c, Options(1, 0.95, tuple(FEATURES)))
    assert fig["count"] == 4 and fig["selection_rate"]["numerator"] == 3
    assert ing.state.traffic["unjudged"] == 1


def test_the_join_index_is_bounded() -> None:
    ing = _ingest(max_tracked=1000)
    ing.feed(_decision(f"d{i}/0") for i in range(1500))
    ing.feed([_outcome("d0/0", "repaid", "2026-12-01T00:00:00Z", "o")])
    assert ing.state.traffic["forgotten"] == 500
    assert ing.state.traffic["outcomes"] == 0 and ing.waiting_outcomes() == ["d0/0"]


def test_the_bench_folds_every_event_it_generates() -> None:
    r = bench_run(2000, 1)
    assert r["events"] == 2000 + 500 + 2 * 200 + 1000
    assert r["ingest_events_per_s"] > 0 and r["report_build_s"] > 0
