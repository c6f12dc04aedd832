"""The metrics registry, read back through prometheus_client's own parsers."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from sidecar.control.app import create_control_app
from sidecar.metrics import Registry
from tests.servers import RecordingUpstream, running_sidecar


def families(reg: Registry) -> dict[str, Metric]:
    return {m.name: m for m in text_string_to_metric_families(reg.render())}


def samples(reg: Registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, for every sample in the rendered text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in text_string_to_metric_families(reg.render())
        for s in m.samples
    }


def test_counters_keep_their_names_and_values() -> None:
    reg = Registry()
    reg.counter("sidecar_decisions_total", "Decisions").inc(3)
    fwd = reg.counter("sidecar_requests_total", "Requests", {"kind": "inference"})
    reg.counter("sidecar_requests_total", "Requests", {"kind": "passthrough"}).inc()
    fwd.inc()
    fwd.inc(2)
    text = reg.render()
    assert "# TYPE sidecar_requests_total counter\n" in text
    assert 'sidecar_requests_total{kind="inference"} 3.0\n' in text
    got = samples(reg)
    assert got[("sidecar_decisions_total", ())] == 3
    assert got[("sidecar_requests_total", (("kind", "inference"),))] == 3
    assert got[("sidecar_requests_total", (("kind", "passthrough"),))] == 1
    assert fwd.value == 3
    # No `_created` series: prometheus_client adds one only when given a creation time.
    assert "_created" not in text
    assert families(reg)["sidecar_requests"].type == "counter"


def test_the_same_name_and_labels_give_the_same_counter() -> None:
    # Two components (the stats of every sink and the Kafka delivery) share one series.
    reg = Registry()
    a = reg.counter("sidecar_events_acked_total", "Events acknowledged")
    b = reg.counter("sidecar_events_acked_total", "Events acknowledged")
    assert a is b
    a.inc()
    b.inc()
    assert samples(reg)[("sidecar_events_acked_total", ())] == 2


def test_gauges_set_and_read_at_scrape_time() -> None:
    reg = Registry()
    depth = [4.0]
    reg.gauge("sidecar_decision_queue_depth", "Queue depth", fn=lambda: depth[0])
    g = reg.gauge("sidecar_explanation_additivity_error_max", "Additivity error")
    g.set(0.25)
    for status, n in (("pending", 2.0), ("claimed", 1.0)):
        reg.gauge("sidecar_review_items", "Items", {"status": status}, fn=lambda n=n: n)
    assert samples(reg) == {
        ("sidecar_decision_queue_depth", ()): 4.0,
        ("sidecar_explanation_additivity_error_max", ()): 0.25,
        ("sidecar_review_items", (("status", "pending"),)): 2.0,
        ("sidecar_review_items", (("status", "claimed"),)): 1.0,
    }
    depth[0] = 7.0
    g.set(0.5)
    got = samples(reg)
    assert got[("sidecar_decision_queue_depth", ())] == 7.0
    assert got[("sidecar_explanation_additivity_error_max", ())] == 0.5
    assert families(reg)["sidecar_review_items"].type == "gauge"


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    reg = Registry()
    h = reg.histogram("sidecar_upstream_latency_seconds", "Latency", bounds=(0.01, 0.1, 1.0))
    for v in (0.005, 0.01, 0.05, 0.5, 0.5, 3.0):  # 0.01 sits on a bound: le is inclusive
        h.observe(v)
    got = samples(reg)
    name = "sidecar_upstream_latency_seconds"
    buckets = {le: got[(name + "_bucket", (("le", le),))] for le in ("0.01", "0.1", "1.0", "+Inf")}
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 5, "+Inf": 6}
    assert got[(name + "_count", ())] == 6
    assert got[(name + "_sum", ())] == pytest.approx(4.065)
    assert (h.count, h.counts) == (6, [2, 1, 2, 1])
    assert families(reg)[name].type == "histogram"


def test_histogram_default_buckets_and_labels() -> None:
    reg = Registry()
    reg.histogram("sidecar_batch_seconds", "Batch time", {"stage": "explain"}).observe(0.003)
    got = samples(reg)
    les = [dict(k[1])["le"] for k in got if k[0] == "sidecar_batch_seconds_bucket"]
    assert les[0] == "0.0005" and les[-2:] == ["10.0", "+Inf"] and len(les) == 15
    assert got[("sidecar_batch_seconds_bucket", (("le", "0.005"), ("stage", "explain")))] == 1
    assert got[("sidecar_batch_seconds_bucket", (("le", "0.0025"), ("stage", "explain")))] == 0
    assert got[("sidecar_batch_seconds_count", (("stage", "explain"),))] == 1


@pytest.mark.parametrize("value", ['say "hi"', "back\\slash", "two\nlines", '\\"\n\\n'])
def test_label_values_are_escaped(value: str) -> None:
    reg = Registry()
    reg.counter("sidecar_events_dropped_total", "Dropped", {"reason": value}).inc()
    text = reg.render()
    # One sample line, whatever the value holds.
    assert sum(line.startswith("sidecar_events_dropped_total{") for line in text.splitlines()) == 1
    assert samples(reg) == {("sidecar_events_dropped_total", (("reason", value),)): 1}


def test_re_registration_with_other_labels_kind_or_bounds_raises() -> None:
    reg = Registry()
    reg.counter("sidecar_requests_total", "Requests", {"kind": "inference"})
    with pytest.raises(ValueError, match="re-registered"):
        reg.counter("sidecar_requests_total", "Requests", {"status": "502"})
    with pytest.raises(ValueError, match="re-registered"):
        reg.counter("sidecar_requests_total", "Requests")
    with pytest.raises(ValueError, match="re-registered"):
        reg.gauge("sidecar_requests_total", "Requests", {"kind": "inference"})
    reg.histogram("sidecar_latency_seconds", "Latency", bounds=(0.1, 1.0))
    with pytest.raises(ValueError, match="bounds"):
        reg.histogram("sidecar_latency_seconds", "Latency", bounds=(0.1, 2.0))


def test_a_name_another_family_renders_is_refused() -> None:
    # prometheus_client's CollectorRegistry knows every series name a family writes.
    reg = Registry()
    reg.histogram("sidecar_latency_seconds", "Latency")
    with pytest.raises(ValueError, match="sidecar_latency_seconds_count"):
        reg.gauge("sidecar_latency_seconds_count", "Clashes with the histogram's count")
    reg.counter("sidecar_decisions_total", "Decisions")
    with pytest.raises(ValueError, match="sidecar_decisions"):
        reg.gauge("sidecar_decisions", "Clashes with the counter's family name")


@pytest.mark.parametrize(
    ("register", "match"),
    [
        (lambda r: r.counter("sidecar requests_total", "space"), "invalid metric name"),
        (lambda r: r.gauge("sidecar-queue-depth", "dash"), "invalid metric name"),
        (lambda r: r.gauge("", "empty"), "invalid metric name"),
        (lambda r: r.counter("sidecar_requests", "no suffix"), "must end in _total"),
        (lambda r: r.counter("sidecar_x_total", "", {"bad-label": "v"}), "invalid label name"),
        (lambda r: r.counter("sidecar_x_total", "", {"__reserved": "v"}), "invalid label name"),
        (lambda r: r.histogram("sidecar_h_seconds", "", {"le": "1"}), "label named le"),
        (lambda r: r.histogram("sidecar_h_seconds", "", bounds=(1.0, 0.5)), "increasing"),
        (lambda r: r.histogram("sidecar_h_seconds", "", bounds=(0.5, 0.5)), "increasing"),
        (lambda r: r.histogram("sidecar_h_seconds", "", bounds=(1.0, float("inf"))), "finite"),
    ],
)
def test_invalid_names_labels_and_bounds_raise_at_registration(
    register: Callable[[Registry], object], match: str
) -> None:
    reg = Registry()
    with pytest.raises(ValueError, match=match):
        register(reg)
    assert reg.render() == ""  # nothing half-registered


def test_registries_are_separate() -> None:
    # One per service: two services in one process neither share nor clash.
    a, b = Registry(), Registry()
    a.counter("sidecar_decisions_total", "Decisions").inc()
    b.counter("sidecar_decisions_total", "Decisions")
    assert samples(a)[("sidecar_decisions_total", ())] == 1
    assert samples(b)[("sidecar_decisions_total", ())] == 0
    # Nothing but what was registered (no process or platform collectors).
    assert set(families(a)) == {"sidecar_decisions"}


async def test_metrics_endpoint_negotiates_text_or_openmetrics() -> None:
    reg = Registry()
    reg.counter("sidecar_decisions_total", "Decisions").inc(2)
    reg.histogram("sidecar_upstream_latency_seconds", "Latency").observe(0.02)
    app = create_control_app(registry=reg, ready_checks=[])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as client:
        plain = await client.get("/metrics")
        om = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert plain.text == reg.render()
    assert om.status_code == 200
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    got = {
        (s.name, tuple(s.labels.items())): s.value
        for m in openmetrics_families(om.text)
        for s in m.samples
    }
    assert got[("sidecar_decisions_total", ())] == 2
    assert got[("sidecar_upstream_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("sidecar_upstream_latency_seconds_count", ())] == 1


# Names the dashboards use, with their types, as a running sidecar serves them.
REAL_NAMES = {
    "sidecar_requests_total": "counter",
    "sidecar_decisions_total": "counter",
    "sidecar_decisions_shed_total": "counter",
    "sidecar_parse_failures_total": "counter",
    "sidecar_events_published_total": "counter",
    "sidecar_decision_queue_depth": "gauge",
    "sidecar_decisions_retained": "gauge",
    "sidecar_review_items": "gauge",
    "sidecar_upstream_latency_seconds": "histogram",
}


def test_a_running_sidecar_serves_the_same_names(upstream: RecordingUpstream) -> None:
    with running_sidecar(upstream.url) as svc:
        u = urlsplit(svc.control_url)
        c = http.client.HTTPConnection(u.hostname or "", u.port, timeout=5)
        c.request("GET", "/metrics")
        r = c.getresponse()
        text = r.read().decode()
        assert r.status == 200
    types = {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")
    }
    assert {n: types.get(n) for n in REAL_NAMES} == REAL_NAMES
    series = {s.name for m in text_string_to_metric_families(text) for s in m.samples}
    assert {
        "sidecar_requests_total",
        "sidecar_upstream_latency_seconds_bucket",
        "sidecar_upstream_latency_seconds_sum",
        "sidecar_upstream_latency_seconds_count",
        "sidecar_decision_queue_depth",
    } <= series
    # Every counter's series carries the name its TYPE line declares.
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total") and name in series, name
