"""An on-demand explanation that fails is remembered: the same decision asked again (a console
refreshed on it) gets the same reason without the explainer running, or logging, again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.control.lookup import Explanations, decision_to_dict
from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks.null import NullSink
from tests.eventlib import make_decision


def _decision(i: int) -> dict[str, Any]:
    return decision_to_dict(make_decision(i, call_id=f"call-{i}"))


@pytest.mark.parametrize("cache_size", [2, 0])
def test_a_failed_explanation_is_not_recomputed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cache_size: int
) -> None:
    registry = Registry()
    store = SqliteReviewStore(tmp_path / "review.db", sink=NullSink(registry), registry=registry)
    calls: list[Decision] = []

    def explain_now(d: Decision) -> dict[str, Any]:
        calls.append(d)
        raise ValueError(f"no such feature in {d.call_id}")

    lookup = Explanations(
        store=store, decisions=None, explain_now=explain_now, cache_size=cache_size,
        registry=registry,
    )  # fmt: skip
    try:
        with caplog.at_level("WARNING", logger="sidecar.review"):
            first = lookup.explain_unsampled(_decision(1), None)
            again = lookup.explain_unsampled(_decision(1), None)
        assert first == (None, None, "explanation failed: no such feature in call-1")
        assert again == first
        if cache_size == 0:
            # Nothing is kept: each ask computes (and logs) again.
            assert len(calls) == 2 and len(caplog.records) == 2
            return
        assert len(calls) == 1 and len(caplog.records) == 1
        # Bounded as the explanations are: past cache_size keys, the oldest is asked again.
        lookup.explain_unsampled(_decision(2), None)
        lookup.explain_unsampled(_decision(3), None)
        lookup.explain_unsampled(_decision(1), None)
        assert [d.call_id for d in calls] == ["call-1", "call-2", "call-3", "call-1"]
    finally:
        store.close()
