"""Per-call cost of the hot path's steps, without sockets (crash ledger counts included), and of the background stages per decision.

    python -m loadtests.bench_hotpath [--steps]

Unit tests hold no timings (a loaded CI box makes them flaky, a quiet one makes them
pass whatever happens); these figures come from here, best of five runs of N calls,
in CPU time of the thread (`time.thread_time`), so other work on a busy machine moves
them less than wall-clock figures.

`--steps` times each step an inference call takes through the sidecar's own code, on
the proxy benchmark's request and the fast upstream's answer (`loadtests.payloads`,
`loadtests.upstreams`), with the service's default settings: what the HTTP server and
the kernel add is `profile_proxy`'s and `bench_proxy`'s to show. The background stages
(sample, record, review, publish to the files sink; no explainer) are timed per decision
over batches of `--batch` calls, as the pipeline hands them over. Run it with another
checkout first on PYTHONPATH for an A/B of two versions of the code on one machine.
"""

from __future__ import annotations

import argparse
import shutil
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


def best_cpu(fn: Callable[[], object], n: int, runs: int = 5) -> float:
    """CPU seconds of this thread per call: the best of `runs` runs of `n` calls."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - t0) / n)
    return best


def steps(n: int, batch: int) -> list[tuple[str, float]]:
    """(step, µs per call) of one single-row V2 call through the data plane's own code."""
    from loadtests.payloads import v2_requests
    from loadtests.upstreams import FAST_RESPONSE_BODY
    from sidecar.control.store import DecisionStore
    from sidecar.dataplane.decide import Decider
    from sidecar.dataplane.headers import request_head, response_headers
    from sidecar.demo.model import model_settings
    from sidecar.pipeline.queue import Batch
    from sidecar.pipeline.sampling import Sampler
    from sidecar.pipeline.stages import Stages
    from sidecar.review.store import SqliteReviewStore
    from sidecar.sinks import build_sink

    work = Path(tempfile.mkdtemp(prefix="bench-hotpath-"))
    try:
        settings = load_settings(
            environ={},
            overrides={
                "model": model_settings(),
                "sink": {"directory": str(work / "events")},
                "review": {"db_path": str(work / "review.db")},
            },
        )
        registry = Registry()
        m = settings.model
        decider = Decider(
            registry=registry,
            max_rows=settings.proxy.max_rows_per_request,
            mlflow_model="model",
            model_version=m.version,
            feature_names=list(m.feature_names),
            class_labels=list(m.class_labels),
            groups=GroupExtractor(settings.groups, registry),
            router=ReviewRouter(settings.review),
        )
        raw = v2_requests("127.0.0.1", 8080)[0]
        head, body = raw.split(b"\r\n\r\n", 1)
        headers = [
            (name.lower(), value)
            for name, _, value in (line.partition(b": ") for line in head.split(b"\r\n")[1:])
        ]
        upstream_headers = [(b"content-type", b"application/json"), (b"content-length", b"200")]
        path = "/v2/models/credit/infer"
        call = decider.recognise("POST", path)
        assert call is not None
        request, groups, fwd_body, fwd_headers = decider.read_request(call, body, headers)
        out: list[tuple[str, float]] = []

        def step(name: str, fn: Callable[[], object]) -> None:
            out.append((name, best_cpu(fn, n) * 1e6))

        step("recognise the call", lambda: decider.recognise("POST", path))
        step("read the request (JSON)", lambda: decider.read_request(call, body, headers))
        step(
            "forwarded request head",
            lambda: request_head(
                "POST", path.encode(), fwd_headers, "127.0.0.1", "http", decider.strip,
                len(fwd_body), b"upstream:80",
            ),
        )  # fmt: skip
        step("answer's headers", lambda: response_headers(upstream_headers))
        step(
            "decide (answer's JSON, rows, decisions, routing)",
            lambda: decider.decide(
                call, request, FAST_RESPONSE_BODY, upstream_headers, headers, 0.001, 0.0, groups
            ),
        )
        sink = build_sink(settings, registry)
        review = SqliteReviewStore(settings.review.db_path, sink=sink, registry=registry)
        store = DecisionStore(settings.decisions.retention, registry)
        stages = Stages(
            store=store,
            sink=sink,
            sampler=Sampler(settings.sampling),
            review_store=review,
            features=settings.sink.features,
        )
        sink.start()

        def one_batch() -> list[Batch]:
            made = [
                decider.decide(
                    call, request, FAST_RESPONSE_BODY, upstream_headers, headers, 0.001, 0.0, groups
                )
                for _ in range(batch)
            ]
            return [b for b in made if b is not None]

        def background() -> None:
            batches = one_batch()
            for _, stage in stages.ordered():
                stage(batches)

        # Per decision, less the cost of making the batch's decisions (timed above).
        make = best_cpu(one_batch, max(n // batch, 3)) / batch
        total = best_cpu(background, max(n // batch, 3)) / batch
        out.append((f"background stages per decision (batches of {batch})", (total - make) * 1e6))
        sink.close()
        review.close()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_hotpath")
    parser.add_argument("-n", type=int, default=2000, help="calls per run")
    parser.add_argument(
        "--steps", action="store_true", help="time each step of an inference call, and the stages"
    )
    parser.add_argument("--batch", type=int, default=64, help="--steps: calls per background batch")
    args = parser.parse_args(argv)
    if args.steps:
        for name, us in steps(args.n, args.batch):
            print(f"{name}: {us:.2f} µs")
        return 0
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
