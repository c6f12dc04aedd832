"""N workers' metric families as one: what `/metrics` shows for the whole data plane.

Counters and histograms are summed per label set: each worker counts its own
calls. Gauges are summed too (queue depths, bytes held, events in flight: the
data plane's total), except those that are a worst case, which take the largest
value, and the liveness gauges, which take the smallest: `sidecar_thread_alive`
is 1 only when that thread is alive in every worker, so an alert on it needs no
`worker` label (the log names the worker). A worker started again after a crash
counts from zero, so a counter's sum falls back as Prometheus sees a restart.
"""

from __future__ import annotations

from typing import Any

from sidecar.control.metrics_view import RawFamily

LARGEST = frozenset(
    {
        "sidecar_oldest_unacked_event_age_seconds",
        "sidecar_explainer_fidelity_max_diff",
        "sidecar_explanation_additivity_error_max",
    }
)
SMALLEST = frozenset({"sidecar_thread_alive", "sidecar_producer_connected"})


def _add(kind: str, name: str, a: Any, b: Any) -> Any:
    if kind == "histogram":
        return [[x + y for x, y in zip(a[0], b[0], strict=True)], a[1] + b[1]]
    if kind == "gauge" and name in LARGEST:
        return max(a, b)
    if kind == "gauge" and name in SMALLEST:
        return min(a, b)
    return a + b


def combine(snapshots: list[list[RawFamily]]) -> list[RawFamily]:
    """One snapshot (`sidecar.control.metrics_view.snapshot`'s shape) for all workers."""
    out: dict[str, RawFamily] = {}
    values: dict[str, dict[tuple[str, ...], Any]] = {}
    for snap in snapshots:
        for name, help_, kind, labels, bounds, children in snap:
            if name not in out:
                out[name] = [name, help_, kind, labels, bounds, []]
                values[name] = {}
            held = values[name]
            for key, value in children:
                k = tuple(key)
                held[k] = _add(kind, name, held[k], value) if k in held else value
    for name, fam in out.items():
        fam[5] = [[list(k), v] for k, v in values[name].items()]
    return list(out.values())
