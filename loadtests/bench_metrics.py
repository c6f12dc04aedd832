"""Metric update cost: our plain counters against prometheus_client's, in one process.

    python -m loadtests.bench_metrics [--number 1000000] [--repeat 7]

The proxy's request path updates a few counters and one histogram per request, so this is
what decides whether updates go through prometheus_client's own metric objects (a lock per
update) or through plain attributes that a collector reads at scrape time. Prints ns per call,
the best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import prometheus_client

from sidecar.metrics import LATENCY_BUCKETS_S, Registry


def _cases() -> dict[str, Callable[[], object]]:
    ours = Registry()
    counter = ours.counter("bench_requests_total", "", {"kind": "forwarded"})
    histogram = ours.histogram("bench_latency_seconds", "")

    theirs = prometheus_client.CollectorRegistry()
    p_counter = prometheus_client.Counter("bench_requests", "", ["kind"], registry=theirs)
    p_child = p_counter.labels(kind="forwarded")
    p_histogram = prometheus_client.Histogram(
        "bench_latency_seconds", "", buckets=LATENCY_BUCKETS_S, registry=theirs
    )
    return {
        "plain Counter.inc()": counter.inc,
        "prometheus_client Counter child .inc()": p_child.inc,
        "prometheus_client Counter.labels(kind=...).inc()": lambda: p_counter.labels(
            kind="forwarded"
        ).inc(),
        "plain Histogram.observe(0.003)": lambda: histogram.observe(0.003),
        "prometheus_client Histogram.observe(0.003)": lambda: p_histogram.observe(0.003),
        # The lambda's own call, to subtract from the rows that need one.
        "empty lambda (call overhead)": lambda: None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for name, fn in _cases().items():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat))
        print(f"{best / args.number * 1e9:8.1f} ns  {name}")


if __name__ == "__main__":
    main()
