"""`/metrics` across the two processes: the data plane's raw values, rendered by the control plane.

The data plane answers a scrape with `snapshot()`: per family its name, help, kind,
label names, bounds and each child's raw value (a number, or a histogram's
per-bucket counts and sum). Nothing is formatted there. The control process merges
that with its own registry (`MergedMetrics`, a prometheus_client collector) and
prometheus_client writes the text:

- a family only one process has is shown as that process has it;
- counters and histograms both have (the review store's transitions, the
  explainer's cache counters) are summed per label set: each process counts its own;
- a gauge both have is the data plane's (the queues, stores and threads it reads
  are there), except `CONTROL_GAUGES`, which the control process computes and the
  data plane is told to skip (the review queue's counts: a SQLite query the data
  plane must not run).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Hashable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sidecar.metrics import Registry, le_labels, render

log = logging.getLogger("sidecar.control")

# Gauges the control process computes itself; the data plane does not read them.
CONTROL_GAUGES = frozenset({"sidecar_review_items"})

# [name, help, kind, label names, bounds, [[label values, value], ...]]; a histogram's
# value is [per-bucket counts (the last above every bound), sum].
RawFamily = list[Any]


def snapshot(registry: Registry, skip: Collection[str] = ()) -> list[RawFamily]:
    """Every family's raw values, gauges read now; those named in `skip` left out."""
    return [
        [f.name, f.help, f.kind, list(f.labels), list(f.bounds), [[list(k), v] for k, v in f.raw()]]
        for f in registry.families()
        if f.name not in skip
    ]


def _sum(kind: str, a: Any, b: Any) -> Any:
    if kind == "histogram":
        return [[x + y for x, y in zip(a[0], b[0], strict=True)], a[1] + b[1]]
    return a + b


def merge(remote: list[RawFamily], own: list[RawFamily]) -> list[RawFamily]:
    """The data plane's families merged with the control process's (rules in the module doc)."""
    mine = {f[0]: f for f in own}
    out: list[RawFamily] = []
    for fam in remote:
        name, _help, kind, labels, bounds, children = fam
        other = mine.pop(name, None)
        if other is None:
            out.append(fam)
            continue
        if other[2] != kind or other[3] != labels or other[4] != bounds:
            log.warning(
                "metric %s differs between the two processes; the data plane's is shown", name
            )
            out.append(fam)
            continue
        if kind == "gauge":
            out.append(other if name in CONTROL_GAUGES else fam)
            continue
        values = {tuple(key): value for key, value in children}
        for key, value in other[5]:
            k = tuple(key)
            values[k] = _sum(kind, values[k], value) if k in values else value
        out.append([name, _help, kind, labels, bounds, [[list(k), v] for k, v in values.items()]])
    out.extend(mine.values())
    return out


_NAN = float("nan")


def restore_nan(families: list[RawFamily]) -> list[RawFamily]:
    """A snapshot as the bridge delivered it, its NaNs put back (in place): JSON has no
    NaN, so a gauge or a histogram's sum that was NaN crossed as null, and summing the
    workers' values or writing the text would fail on it."""
    for _name, _help, kind, _labels, _bounds, children in families:
        for child in children:
            if kind == "histogram":
                if child[1][1] is None:
                    child[1][1] = _NAN
            elif child[1] is None:
                child[1] = _NAN
    return families


def _family(raw: RawFamily) -> Metric:
    name, help_, kind, labels, bounds, children = raw
    return render(name, help_, kind, labels, le_labels(bounds), children)


# prometheus_client's encoders (text 0.0.4, OpenMetrics): a collector in, the text out.
Encoder = Callable[[Collector], bytes]


class _Families(Collector):
    """A collector over given families: what an encoder is handed for part of a scrape."""

    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class MergedMetrics:
    """A prometheus_client collector: `fetch()` (the data plane's snapshot) merged with `own`.

    `text(encode)` is the scrape itself. prometheus_client's formatting of each sample
    line was most of a scrape's CPU in the control process (0.82 ms for 216 lines here),
    and between two scrapes most families do not change (a counter of parse failures, a
    histogram of contest resolutions): so each family's text is kept with the raw values
    it came from and written again only when they differ. The encoders write family by
    family, so the text is what they write over the whole collector (tests hold it).
    """

    def __init__(self, own: Registry, fetch: Callable[[], list[RawFamily]]) -> None:
        self._own = own
        self._fetch = fetch
        # Per encoder (`_encoder_key`): its tail, and per family name the raw family and
        # its text without the tail. At most `KEPT_ENCODERS`, the oldest dropped first.
        self._kept: dict[Hashable, tuple[bytes, dict[str, tuple[RawFamily, bytes]]]] = {}

    def _merged(self) -> list[RawFamily]:
        return merge(self._fetch(), snapshot(self._own))

    def collect(self) -> Iterator[Metric]:
        for raw in self._merged():
            yield _family(raw)

    def text(self, encode: Encoder) -> bytes:
        """What `encode` writes for this collector, from families' texts kept since the
        last scrape where their values are the same."""
        key = _encoder_key(encode)
        entry = self._kept.get(key)
        if entry is None:
            while len(self._kept) >= KEPT_ENCODERS:
                del self._kept[next(iter(self._kept))]
            # OpenMetrics ends with `# EOF`; the text format with nothing.
            entry = self._kept[key] = (encode(_Families()), {})
        tail, texts = entry
        parts: list[bytes] = []
        for raw in self._merged():
            kept = texts.get(raw[0])
            # Deep equality of numbers, strings and lists: equal values write equal text.
            if kept is None or kept[0] != raw:
                text = encode(_Families(_family(raw)))
                kept = texts[raw[0]] = (raw, text[: len(text) - len(tail)])
            parts.append(kept[1])
        parts.append(tail)
        return b"".join(parts)


# How many encoders' texts a scrape keeps. choose_encoder makes the encoder from the
# scraper's Accept header (format, version, escaping), so which ones come is the client's
# choice: a scraper uses one, and a client sending new versions each time costs a
# re-render, never memory.
KEPT_ENCODERS = 4


def _encoder_key(encode: Encoder) -> Hashable:
    """What an encoder is: choose_encoder returns a new `partial` per scrape for OpenMetrics
    and versioned text, so the function and its arguments, not the object."""
    if isinstance(encode, functools.partial):
        return (encode.func, encode.args, tuple(sorted(encode.keywords.items())))
    return encode
