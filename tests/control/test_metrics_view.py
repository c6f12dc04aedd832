"""/metrics across two processes: the data plane's raw values merged with the control's."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from sidecar.control.metrics_view import CONTROL_GAUGES, MergedMetrics, snapshot
from sidecar.metrics import Registry


def _render(data_plane: Registry, control: Registry) -> str:
    asked: list[list[str]] = []

    def fetch() -> list[list[object]]:
        skip = sorted(CONTROL_GAUGES)
        asked.append(skip)
        # As it crosses the bridge: JSON both ways.
        raw: list[list[object]] = orjson.loads(orjson.dumps(snapshot(data_plane, skip)))
        return raw

    shown = CollectorRegistry()
    shown.register(MergedMetrics(control, fetch))
    text = generate_latest(shown).decode()
    assert asked == [sorted(CONTROL_GAUGES)]
    return text


def test_both_processes_counters_and_histograms_are_summed_and_each_gauge_has_one_owner() -> None:
    dp, cp = Registry(), Registry()
    dp.counter("sidecar_requests_total", "Requests").inc(5)
    dp.counter("sidecar_review_transitions_total", "T", {"action": "claimed"}).inc(1)
    cp.counter("sidecar_review_transitions_total", "T", {"action": "claimed"}).inc(2)
    cp.counter("sidecar_review_transitions_total", "T", {"action": "approved"}).inc(3)
    dp.histogram("sidecar_batch_seconds", "B", bounds=(0.1, 1.0)).observe(0.05)
    cp.histogram("sidecar_batch_seconds", "B", bounds=(0.1, 1.0)).observe(0.5)
    dp.gauge("sidecar_queue_depth", "Q", fn=lambda: 7.0)
    cp.gauge("sidecar_queue_depth", "Q", fn=lambda: 0.0)  # the control's idle copy
    calls: list[str] = []

    def data_plane_count() -> float:
        calls.append("dp")
        return 99.0

    dp.gauge("sidecar_review_items", "I", {"status": "pending"}, fn=data_plane_count)
    cp.gauge("sidecar_review_items", "I", {"status": "pending"}, fn=lambda: 4.0)
    cp.counter("sidecar_explanations_on_demand_total", "O").inc(1)

    text = _render(dp, cp)
    assert "sidecar_requests_total 5.0" in text
    assert 'sidecar_review_transitions_total{action="claimed"} 3.0' in text
    assert 'sidecar_review_transitions_total{action="approved"} 3.0' in text
    assert 'sidecar_batch_seconds_bucket{le="0.1"} 1.0' in text
    assert 'sidecar_batch_seconds_bucket{le="1.0"} 2.0' in text
    assert 'sidecar_batch_seconds_bucket{le="+Inf"} 2.0' in text
    assert "sidecar_batch_seconds_count 2.0" in text
    assert "sidecar_batch_seconds_sum 0.55" in text
    assert "sidecar_queue_depth 7.0" in text
    # The queue's counts are the control process's; the data plane never ran its query.
    assert 'sidecar_review_items{status="pending"} 4.0' in text
    assert calls == []
    assert "sidecar_explanations_on_demand_total 1.0" in text
    # Each family once.
    assert text.count("# TYPE sidecar_review_transitions_total counter") == 1


def test_a_family_that_differs_between_the_processes_shows_the_data_planes() -> None:
    dp, cp = Registry(), Registry()
    dp.counter("sidecar_x_total", "X", {"a": "1"}).inc(2)
    cp.counter("sidecar_x_total", "X").inc(5)
    text = _render(dp, cp)
    assert 'sidecar_x_total{a="1"} 2.0' in text
    assert "sidecar_x_total 5.0" not in text
