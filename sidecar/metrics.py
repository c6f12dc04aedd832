"""A small Prometheus text-format registry.

Counters are plain attribute increments so the proxy's hot path pays a few
nanoseconds per update; rendering walks the registry only when scraped.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence

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


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt_labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class Counter:
    """A monotonically increasing value. `inc` is safe enough under the GIL for `+=` on ints."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n


class Gauge:
    __slots__ = ("_fn", "value")

    def __init__(self, fn: Callable[[], float] | None = None) -> None:
        self.value: float = 0
        self._fn = fn

    def set(self, v: float) -> None:
        self.value = v

    def get(self) -> float:
        return self._fn() if self._fn is not None else self.value


class Histogram:
    __slots__ = ("_lock", "bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.bounds, v)
        self.counts[i] += 1
        self.sum += v
        self.count += 1


class _Family:
    def __init__(self, name: str, help_: str, kind: str, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help_
        self.kind = kind
        self.labels = tuple(labels)
        self.children: dict[tuple[str, ...], Counter | Gauge | Histogram] = {}


class Registry:
    """Holds metric families; one registry per running service (no module globals)."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def _child(
        self,
        name: str,
        help_: str,
        kind: str,
        labels: dict[str, str] | None,
        make: Callable[[], Counter | Gauge | Histogram],
    ) -> Counter | Gauge | Histogram:
        labels = labels or {}
        with self._lock:
            fam = self._families.get(name)
            if fam is None:
                fam = _Family(name, help_, kind, tuple(labels))
                self._families[name] = fam
            elif fam.kind != kind or fam.labels != tuple(labels):
                raise ValueError(f"metric {name} re-registered with another kind or labels")
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
        h = self._child(name, help_, "histogram", labels, lambda: Histogram(bounds))
        assert isinstance(h, Histogram)
        return h

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            families = list(self._families.values())
        for fam in families:
            out.append(f"# HELP {fam.name} {fam.help}")
            out.append(f"# TYPE {fam.name} {fam.kind}")
            for key, child in list(fam.children.items()):
                out.extend(_render_child(fam, key, child))
        return "\n".join(out) + "\n"


def _render_child(
    fam: _Family, key: tuple[str, ...], child: Counter | Gauge | Histogram
) -> Iterable[str]:
    if isinstance(child, Histogram):
        cumulative = 0
        for bound, n in zip((*child.bounds, math.inf), child.counts, strict=True):
            cumulative += n
            lbl = _fmt_labels((*fam.labels, "le"), (*key, _fmt_value(bound)))
            yield f"{fam.name}_bucket{lbl} {cumulative}"
        lbl = _fmt_labels(fam.labels, key)
        yield f"{fam.name}_sum{lbl} {_fmt_value(child.sum)}"
        yield f"{fam.name}_count{lbl} {child.count}"
    elif isinstance(child, Gauge):
        yield f"{fam.name}{_fmt_labels(fam.labels, key)} {_fmt_value(child.get())}"
    else:
        yield f"{fam.name}{_fmt_labels(fam.labels, key)} {_fmt_value(child.value)}"
