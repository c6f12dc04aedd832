"""/metrics across two processes: the data plane's raw values merged with the control's."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from sidecar.control.metrics_view import CONTROL_GAUGES, MergedMetrics, restore_nan, snapshot
from sidecar.metrics import Registry


def _render(data_plane: Registry, control: Registry) -> str:
    asked: list[list[str]] = []

    def fetch() -> list[list[object]]:
        skip = sorted(CONTROL_GAUGES)
        asked.append(skip)
        # As it crosses the bridge: JSON both ways.
        raw: list[list[object]] = orjson.loads(orjson.dumps(snapshot(data_plane, skip)))
        return restore_nan(raw)

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


ENCODERS = {
    "text 0.0.4": "text/plain",
    "OpenMetrics": "application/openmetrics-text; version=1.0.0",
}


def test_a_scrape_is_what_the_encoder_writes_and_only_changed_families_are_written_again() -> None:
    from prometheus_client.exposition import choose_encoder

    dp, cp = Registry(), Registry()
    requests = dp.counter("sidecar_requests_total", "Requests", {"code": "200"})
    latency = dp.histogram("sidecar_upstream_latency_seconds", "L", bounds=(0.001, 0.01))
    dp.counter("sidecar_parse_failures_total", "P", {"protocol": "v2"})
    level = [1.0]
    dp.gauge("sidecar_queue_depth", "Q", fn=lambda: level[0])
    cp.counter("sidecar_review_transitions_total", "T", {"action": "claimed"}).inc(2)
    merged = MergedMetrics(cp, lambda: snapshot(dp))
    whole = CollectorRegistry()
    whole.register(merged)

    for accept in ENCODERS.values():
        encode, _ = choose_encoder(accept)
        written: list[str] = []

        def counting(
            collector: object, encode: object = encode, written: list[str] = written
        ) -> bytes:
            written.extend(m.name for m in collector.collect())  # type: ignore[attr-defined]
            return encode(collector)  # type: ignore[operator,no-any-return]

        assert merged.text(counting) == encode(whole)
        assert len(written) == 5
        written.clear()
        requests.inc(3)
        latency.observe(0.005)
        assert merged.text(counting) == encode(whole)
        # The counter and the histogram changed; the rest came from the last scrape.
        assert sorted(written) == ["sidecar_requests", "sidecar_upstream_latency_seconds"]
        written.clear()
        level[0] = float("nan")
        assert merged.text(counting) == encode(whole)
        assert merged.text(counting) == encode(whole)
        assert b"sidecar_queue_depth NaN" in merged.text(counting)
        level[0] = 1.0


def test_a_nan_gauge_that_crossed_the_bridge_as_null_is_shown_as_nan() -> None:
    dp, cp = Registry(), Registry()
    dp.gauge("sidecar_queue_depth", "Q", fn=lambda: float("nan"))
    text = _render(dp, cp)
    assert "sidecar_queue_depth NaN" in text


def test_encoders_made_afresh_per_scrape_share_their_texts_and_few_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """choose_encoder makes a new `partial` per call for OpenMetrics: keyed by what it is,
    and a client that sends a new version each time cannot grow what is kept."""
    from prometheus_client.exposition import choose_encoder

    from sidecar.control import metrics_view

    dp, cp = Registry(), Registry()
    dp.counter("sidecar_requests_total", "Requests").inc(1)
    dp.counter("sidecar_parse_failures_total", "P")
    merged = MergedMetrics(cp, lambda: snapshot(dp))
    whole = CollectorRegistry()
    whole.register(merged)
    rendered: list[str] = []
    family = metrics_view._family
    monkeypatch.setattr(metrics_view, "_family", lambda raw: rendered.append(raw[0]) or family(raw))
    accept = "application/openmetrics-text; version=1.0.0"

    first = merged.text(choose_encoder(accept)[0])
    assert first == choose_encoder(accept)[0](whole) and first.endswith(b"# EOF\n")
    rendered.clear()
    for _ in range(3):
        assert merged.text(choose_encoder(accept)[0]) == first  # a new object every scrape
    assert rendered == []
    for minor in range(50):
        encode = choose_encoder(f"application/openmetrics-text; version=1.{minor}.0")[0]
        assert merged.text(encode) == encode(whole)
    assert len(merged._kept) <= metrics_view.KEPT_ENCODERS
