"""Metrics: plain counters on the hot path, prometheus_client for names, types and exposition.

Updates stay plain attribute increments: in one process (`python -m loadtests.bench_metrics`,
2 shared cores, best of 7), `Counter.inc()` took 65-95 ns against 550-760 ns for a
prometheus_client counter child (a lock per update) and 3,000-4,200 ns through `.labels()`,
and `Histogram.observe()` 280-580 ns against 1,500-3,400 ns; the proxy makes several updates
per request. Each family is a prometheus_client collector that reads those values at scrape
time, on one `CollectorRegistry` per service, and prometheus_client writes the text.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from prometheus_client.validation import (
    METRIC_LABEL_NAME_RE,
    METRIC_NAME_RE,
    RESERVED_METRIC_LABEL_NAME_RE,
)

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Kind = Literal["counter", "gauge", "histogram"]


class Counter:
    """A monotonically increasing value. `inc` is safe enough under the GIL for `+=` on ints."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n


class Gauge:
    """A value that is set, or read from `fn` at scrape time."""

    __slots__ = ("_fn", "value")

    def __init__(self, fn: Callable[[], float] | None = None) -> None:
        self.value: float = 0
        self._fn = fn

    def set(self, v: float) -> None:
        self.value = v

    def get(self) -> float:
        return self._fn() if self._fn is not None else self.value


class Histogram:
    """Per-bucket (not cumulative) counts; the last slot counts values above every bound."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.bounds, v)
        self.counts[i] += 1
        self.sum += v
        self.count += 1


Child = Counter | Gauge | Histogram


def _check_names(name: str, kind: Kind, labels: tuple[str, ...]) -> None:
    # prometheus_client accepts any UTF-8 name by default and escapes it on the way out; we
    # hold names to the classic charset so what we register is what a scraper sees.
    if not METRIC_NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    # A counter family gets `_total` appended by prometheus_client; requiring it keeps the name.
    if kind == "counter" and not name.endswith("_total"):
        raise ValueError(f"counter {name!r} must end in _total")
    for label in labels:
        if not METRIC_LABEL_NAME_RE.match(label) or RESERVED_METRIC_LABEL_NAME_RE.match(label):
            raise ValueError(f"invalid label name {label!r} on {name}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate label names {labels} on {name}")
    if kind == "histogram" and "le" in labels:
        raise ValueError(f"histogram {name} cannot have a label named le")


class _Family:
    """One metric family; a prometheus_client collector reading its children at scrape time."""

    def __init__(
        self, name: str, help_: str, kind: Kind, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        _check_names(name, kind, labels)
        if kind == "histogram" and (
            any(not math.isfinite(b) for b in bounds)
            or any(a >= b for a, b in itertools.pairwise(bounds))
        ):
            raise ValueError(f"histogram {name} bounds must be finite and increasing: {bounds}")
        self.name = name
        self.help = help_
        self.kind = kind
        self.labels = labels
        self.bounds = bounds
        self.children: dict[tuple[str, ...], Child] = {}
        # Hoisted: formatted once, not per scrape.
        self._le = le_labels(bounds)

    def describe(self) -> list[Metric]:
        """The family's names, so the CollectorRegistry refuses another collector's clash."""
        return [render(self.name, self.help, self.kind, self.labels, self._le, ())]

    def raw(self) -> list[tuple[tuple[str, ...], Any]]:
        """Each child's label values and raw value (`raw_value`), read now."""
        # list() copies in one step, so a child added by another thread cannot break the loop.
        return [(key, raw_value(child)) for key, child in list(self.children.items())]

    def collect(self) -> list[Metric]:
        return [render(self.name, self.help, self.kind, self.labels, self._le, self.raw())]


def le_labels(bounds: Sequence[float]) -> tuple[str, ...]:
    """A histogram's `le` label values, formatted as prometheus_client's own Histogram does
    (1.0 -> "1.0"), with +Inf last."""
    # floatToGoString has no annotations.
    le: list[str] = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
    return (*le, "+Inf")


def raw_value(child: Child) -> Any:
    """A counter's count, a gauge's value read now, or a histogram's [per-bucket counts, sum]."""
    if isinstance(child, Histogram):
        return [list(child.counts), child.sum]
    if isinstance(child, Gauge):
        return child.get()
    return child.value


def render(
    name: str,
    help_: str,
    kind: Kind,
    labels: Sequence[str],
    le: Sequence[str],
    children: Iterable[tuple[Sequence[str], Any]],
) -> Metric:
    """One family as prometheus_client writes it, from its children's raw values: the one
    place that formats them, for this process's families and for the control process's
    view of the data plane's (`sidecar.control.metrics_view`)."""
    family: Metric
    if kind == "counter":
        family = CounterMetricFamily(name, help_, labels=labels)
        for key, value in children:
            # No `created`: prometheus_client would add a `_created` series per child.
            family.add_metric(key, value)
    elif kind == "gauge":
        family = GaugeMetricFamily(name, help_, labels=labels)
        for key, value in children:
            family.add_metric(key, value)
    else:
        family = HistogramMetricFamily(name, help_, labels=labels)
        for key, (counts, total) in children:
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound, n in zip(le, counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            # _count is the +Inf bucket, so the two agree even mid-observe().
            family.add_metric(key, buckets, total)
    return family


class Registry:
    """Holds metric families; one registry per running service (no module globals)."""

    def __init__(self) -> None:
        self.collectors = CollectorRegistry()
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def _child(
        self,
        name: str,
        help_: str,
        kind: Kind,
        labels: dict[str, str] | None,
        make: Callable[[], Child],
        bounds: tuple[float, ...] = (),
    ) -> Child:
        labels = labels or {}
        names = tuple(labels)
        with self._lock:
            fam = self._families.get(name)
            if fam is None:
                fam = _Family(name, help_, kind, names, bounds)
                self.collectors.register(fam)
                self._families[name] = fam
            elif fam.kind != kind or fam.labels != names:
                raise ValueError(f"metric {name} re-registered with another kind or labels")
            elif fam.bounds != bounds:
                raise ValueError(f"histogram {name} re-registered with other bounds")
            key = tuple(labels.values())
            child = fam.children.get(key)
            if child is None:
                child = make()
                fam.children[key] = child
            return child

    def counter(self, name: str, help_: str, labels: dict[str, str] | None = None) -> Counter:
        c = self._child(name, help_, "counter", labels, Counter)
        assert isinstance(c, Counter)
        return c

    def gauge(
        self,
        name: str,
        help_: str,
        labels: dict[str, str] | None = None,
        fn: Callable[[], float] | None = None,
    ) -> Gauge:
        g = self._child(name, help_, "gauge", labels, lambda: Gauge(fn))
        assert isinstance(g, Gauge)
        return g

    def histogram(
        self,
        name: str,
        help_: str,
        labels: dict[str, str] | None = None,
        bounds: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        b = tuple(bounds)
        h = self._child(name, help_, "histogram", labels, lambda: Histogram(b), b)
        assert isinstance(h, Histogram)
        return h

    def families(self) -> list[_Family]:
        """The families registered so far (the control process reads their raw values)."""
        with self._lock:
            return list(self._families.values())

    def render(self) -> str:
        """The Prometheus text format (0.0.4), as prometheus_client writes it."""
        return generate_latest(self.collectors).decode()
