"""Per-call cost of the hot path's rule steps: group attributes from a header, review routing, crash ledger counts.

    python -m loadtests.bench_hotpath

Unit tests hold no timings (a loaded CI box makes them flaky, a quiet one makes them
pass whatever happens); these figures come from here, best of five runs of N calls.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.config import load_settings
from sidecar.dataplane.groups import GroupExtractor
from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.pipeline.routing import ReviewRouter
from sidecar.sinks.crash import ANSWERED, LAST_ANSWER, CrashLedger


def best_of(fn: Callable[[], object], n: int, runs: int = 5) -> float:
    """Seconds per call: the best of `runs` runs of `n` calls."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def _decision(i: int) -> Decision:
    return Decision(
        call_id=f"hot{i}",
        row=0,
        time=0.0,
        protocol="v2",
        model_name="m",
        model_version=None,
        features=[1.0, 2.0],
        feature_names=["a", "b"],
        prediction=1,
        probabilities=[0.3, 0.7],
        confidence=0.7,
        upstream_status=200,
        upstream_latency_ms=1.0,
        group_attributes={"age_band": "30-39", "gender": "M"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_hotpath")
    parser.add_argument("-n", type=int, default=2000, help="calls per run")
    args = parser.parse_args(argv)
    settings = load_settings(
        environ={},
        overrides={
            "groups": {"privacy": {"gender": "hash"}, "hash_key": "k"},
            "review": {
                "band": [0.45, 0.5],
                "audit_rate": 0.01,
                "group_rules": {"age_band=18-24": 0.2},
            },
        },
    )
    extractor = GroupExtractor(settings.groups, Registry())
    headers = [
        (b"host", b"h"),
        (b"content-type", b"application/json"),
        (b"x-group-attributes", b"gender=F; age_band=30-39"),
    ]
    groups = best_of(lambda: extractor.from_request(headers, None, None), args.n)
    router = ReviewRouter(settings.review)
    ds = [_decision(i) for i in range(1000)]
    it = iter(range(1 << 62))
    route = best_of(lambda: router.route(ds[next(it) % 1000], False), args.n)
    # The crash ledger's two stores in Pipeline.submit, into a real mapped file, against
    # the same call doing nothing: what a call pays for the count that survives a SIGKILL.
    with tempfile.TemporaryDirectory() as tmp:
        ledger = CrashLedger(Path(tmp))
        ledger.open(0)
        counts, times = ledger.counts, ledger.times
        batch = ds[:1]

        def counted() -> None:
            counts[ANSWERED] += 1
            times[LAST_ANSWER] = batch[0].time

        def bare() -> None:
            pass

        ledger_ns = (best_of(counted, args.n * 50) - best_of(bare, args.n * 50)) * 1e9
    print(f"group attributes from a header (hash policy): {groups * 1e6:.2f} µs per call")
    print(f"review routing, every rule evaluated: {route * 1e6:.2f} µs per decision")
    print(f"crash ledger counts (answered, last answer time): {ledger_ns:.0f} ns per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
