"""Monitor throughput: events read and folded per second on one core, and the report's time.

    python -m loadtests.bench_monitor [--decisions 200000] [--repeat 3] [--json]

The events are JSON Lines as the files sink writes them: per decision one decision
event (10 features, two group attributes, one intersection monitored), an explanation
for a quarter, a review request and decision for a tenth, an outcome for half, in
stream order. Measured on one core (the process is pinned to one CPU): `ingest` parses
each line with orjson and folds it into the state; the baseline in the same run is
orjson's parse alone over the same lines, the floor any Python consumer pays. `report`
is the time to build the JSON report from the folded state. `checkpoint` is what the
continuous monitor pays to store a shard that holds every decision (its sums, join index
and offsets, encoded as the state stores write them), and `restore` what a restarted one
pays to read it back. Best of `--repeat`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson

from sidecar.config.sections import MonitorSettings
from sidecar.monitor.checkpoint import Checkpoint, capture, decode_resume, encode_resume, restore
from sidecar.monitor.ingest import Ingest
from sidecar.monitor.report import ModelInfo, build
from sidecar.monitor.state import State

FEATURES = [f"f{i}" for i in range(10)]
LABELS = ["default", "repaid"]
T0 = 1_795_392_000


def event_lines(decisions: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    lines: list[bytes] = []
    later: list[bytes] = []
    for i in range(decisions):
        did = f"{i:032x}/0"
        score = rng.random()
        t = T0 + i * 0.5
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000000Z"
        lines.append(
            orjson.dumps(
                {
                    "event_type": "decision",
                    "schema_version": 1,
                    "event_id": f"e{i}",
                    "decision_id": did,
                    "time": when,
                    "model_name": "credit",
                    "model_version": "3",
                    "protocol": "v2",
                    "feature_names": FEATURES,
                    "features": [round(rng.gauss(0, 1), 4) for _ in FEATURES],
                    "prediction": LABELS[score >= 0.5],
                    "probabilities": [1 - score, score],
                    "confidence": max(score, 1 - score),
                    "group_attributes": {
                        "gender": rng.choice("FM"),
                        "age_band": rng.choice(["18-29", "30-39", "40-49", "50+"]),
                    },
                    "review": "queued" if i % 10 == 0 else None,
                    "sampled": i % 4 == 0,
                    "upstream_status": 200,
                    "upstream_latency_ms": 1.2,
                }
            )
        )
        if i % 4 == 0:
            row = [round(rng.gauss(0, 0.3), 5) for _ in FEATURES]
            lines.append(
                orjson.dumps(
                    {
                        "event_type": "explanation",
                        "event_id": f"x{i}",
                        "decision_id": did,
                        "time": when,
                        "feature_names": FEATURES,
                        "contributions": [[-v for v in row], row],
                        "base_values": [0.1, -0.1],
                    }
                )
            )
        if i % 10 == 0:
            # As a sidecar's store emits them: a decided step's outcome is the final answer.
            for action, verdict, outcome in (
                ("requested", None, None),
                ("decided", "override" if i % 30 == 0 else "approve", LABELS[i % 2]),
            ):
                lines.append(
                    orjson.dumps(
                        {
                            "event_type": "review",
                            "event_id": f"r{i}{action}",
                            "decision_id": did,
                            "action": action,
                            "reason": f"{verdict}: checked" if verdict else "low_confidence",
                            "outcome": outcome,
                            "verdict": verdict,
                            "time": when,
                        }
                    )
                )
        if i % 2 == 0:
            later.append(
                orjson.dumps(
                    {
                        "event_type": "outcome",
                        "event_id": f"o{i}",
                        "decision_id": did,
                        "outcome": LABELS[rng.random() < score],
                        "observed_at": when,
                    }
                )
            )
    # Joined and split again, as the files source reads them: orjson's output buffers are
    # over-allocated and shrunk in place, which left the generator's RSS 15 times the bytes.
    blob = b"\n".join(lines + later)
    del lines, later
    return blob.split(b"\n")


def _ingest(lines: list[bytes], settings: MonitorSettings) -> Ingest:
    state = State(feature_names=FEATURES, edges=[[-1.0, -0.5, 0.0, 0.5, 1.0]] * len(FEATURES))
    ing = Ingest(
        state,
        window_s=settings.window_s,
        class_labels=LABELS,
        favourable_label="repaid",
        intersections=settings.intersections,
        max_tracked=settings.max_tracked_decisions,
    )
    loads = orjson.loads
    ing.feed(loads(line) for line in lines)
    return ing


def _rss_kib() -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    return int(status.split("VmRSS:")[1].split()[0])


def run(decisions: int, repeat: int) -> dict[str, Any]:
    settings = MonitorSettings(window="1h", intersections=[["gender", "age_band"]])
    lines = event_lines(decisions)
    parse, ingest, report, checkpoint, restoring = [], [], [], [], []
    stored = 0
    rss_before = _rss_kib()
    state_kib = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for line in lines:
            orjson.loads(line)
        parse.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ing = _ingest(lines, settings)
        ingest.append(time.perf_counter() - t0)
        state_kib = state_kib or _rss_kib() - rss_before
        t0 = time.perf_counter()
        build(ing.snapshot(), settings, ModelInfo(LABELS, "repaid"), None)
        report.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ck = capture("kafka-p0", ing, {"sidecar.decisions": len(lines)})
        # As the stores write it: the sums as JSON, the join index compressed.
        state_json = json.dumps(ck.state).encode()
        resume = encode_resume(ck.resume)
        checkpoint.append(time.perf_counter() - t0)
        stored = len(state_json) + len(resume)
        del ing, ck
        t0 = time.perf_counter()
        again = _ingest([], settings)
        restore(
            again,
            Checkpoint("kafka-p0", json.loads(state_json), decode_resume(resume), {}),
        )
        restoring.append(time.perf_counter() - t0)
        del again, state_json, resume
    n = len(lines)
    return {
        "decisions": decisions,
        "events": n,
        "parse_only_events_per_s": n / min(parse),
        "ingest_events_per_s": n / min(ingest),
        "ingest_to_parse_ratio": min(ingest) / min(parse),
        "ingest_s": min(ingest),
        "report_build_s": min(report),
        # The join index and the statistics: resident memory the first ingest added.
        "state_bytes_per_decision": state_kib * 1024 / decisions,
        "checkpoint_s": min(checkpoint),
        "checkpoint_to_ingest_ratio": min(checkpoint) / min(ingest),
        "checkpoint_bytes_per_decision": stored / decisions,
        "restore_s": min(restoring),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):  # one core, as the figure is stated
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    result = run(args.decisions, args.repeat)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for k, v in result.items():
            print(f"{k}: {v:,.3f}" if isinstance(v, float) else f"{k}: {v:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
