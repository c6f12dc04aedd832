"""The events benchmark: spool write cost, and events/s through the Kafka sink to a real broker.

    python -m loadtests.bench_sink [--events 100000] [--bootstrap HOST:PORT] [--proxy-broker-down]

1. Spool append: µs per event for each fsync policy (target <= 20 µs without fsync per record).
2. Building a decision event (the pipeline's share): µs per event.
3. Kafka sink: events/s from `publish` until the broker acknowledged the last one, with this
   process pinned to one core and the broker on the others (target >= 20,000 events/s).
4. Files sink: events/s.
5. With --proxy-broker-down: the proxy benchmark (loadtests.bench_proxy) with sink.kind = kafka
   and a broker that is down: the proxy's p99 must stay within the same budget.
6. With --proxy-broker-hung (run alone, nothing else): the proxy under load before, while and
   after its broker is hung (SIGSTOP past request_timeout_ms and delivery_timeout_ms: the
   kernel still accepts connections, nothing answers), with the sidecar's CPU idle and
   loaded in each phase and how long delivery takes to catch up once the broker is back.

Without --bootstrap it starts its own broker with scripts/kafka.sh on free ports. Writes the
result as JSON to loadtests/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loadtests.bench_proxy import LOCK_PATH, _exclusive
from loadtests.loadgen import run_load
from loadtests.procs import cpu_seconds
from sidecar.config import load_settings
from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.sinks import events
from sidecar.sinks.files import FileSink
from sidecar.sinks.kafka import KafkaSink
from sidecar.sinks.spool import Spool

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "loadtests" / "results"
TARGETS = {"spool_append_us": 20.0, "kafka_events_per_s": 20_000.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample_decision(i: int) -> Decision:
    """A decision shaped like the demo's: 8 features, two classes, two group attributes."""
    return Decision(
        call_id=uuid.UUID(int=i).hex,
        row=0,
        time=time.time(),
        protocol="v2",
        model_name="credit",
        model_version="1",
        features=[35.0 + i % 40, 52000.0, 0.31, 2.0, 1.0, 0.0, 7.5, 12.0],
        feature_names=[
            "age",
            "income",
            "debt_ratio",
            "accounts",
            "owns_home",
            "defaults",
            "tenure",
            "util",
        ],
        prediction=i % 2,
        probabilities=[0.3, 0.7],
        confidence=0.7,
        upstream_status=200,
        upstream_latency_ms=0.8,
        group_attributes={"gender": "F", "age_band": "30-39"},
    )


def bench_spool(n: int, work: Path) -> dict[str, Any]:
    body = events.dumps(events.decision_event(sample_decision(1)))
    eid, when = "6b1f4c3e-2a8d-5e7b-9c41-0d3f5a6e7b80", "2026-11-23T10:00:00.000000Z"
    out: dict[str, Any] = {"event_bytes": len(body)}
    for policy, count in (("never", n), ("interval", n), ("always", min(n, 2000))):
        spool = Spool(
            work / f"spool-{policy}",
            Registry(),
            max_bytes=1 << 34,
            segment_bytes=64 << 20,
            fsync=policy,  # type: ignore[arg-type]
        )
        spool.open()
        t = time.perf_counter()
        for i in range(count):
            spool.append("decision", f"{i}/0", eid, when, body)
        dt_s = time.perf_counter() - t
        spool.close()
        out[f"append_us_fsync_{policy}"] = 1e6 * dt_s / count
    out["spool_append_us"] = max(out["append_us_fsync_never"], out["append_us_fsync_interval"])
    return out


def bench_build(n: int) -> dict[str, Any]:
    decisions = [sample_decision(i) for i in range(n)]
    t = time.perf_counter()
    for d in decisions:
        events.dumps(events.decision_event(d))
    return {"build_and_serialise_us": 1e6 * (time.perf_counter() - t) / n}


@contextmanager
def own_broker(cpus: set[int] | None) -> Iterator[tuple[str, Path]]:
    """A broker on free ports: (bootstrap, data directory with its kafka.pid)."""
    port, cport = _free_port(), _free_port()
    data = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    env = dict(
        os.environ, KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(cport), KAFKA_DATA=str(data)
    )
    script = str(ROOT / "scripts" / "kafka.sh")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    subprocess.run([script, "start"], env=env, check=True, preexec_fn=pin)
    try:
        yield f"127.0.0.1:{port}", data
    finally:
        subprocess.run([script, "stop"], env=env, check=False)
        shutil.rmtree(data, ignore_errors=True)


def bench_kafka(
    n: int, bootstrap: str, work: Path, linger_ms: int, batch_size: int
) -> dict[str, Any]:
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        environ={},
        overrides={
            "sink": {"kind": "kafka"},
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic_decisions": topic,
                "linger_ms": linger_ms,
                "batch_size": batch_size,
            },
            "spool": {"directory": str(work / "kafka-spool")},
        },
    )
    bodies = [events.decision_event(sample_decision(i)) for i in range(n)]
    reg = Registry()
    sink = KafkaSink(settings.kafka, settings.spool, reg)
    sink.start()
    # Warm up: topic creation, metadata, producer id.
    warm = events.decision_event(sample_decision(10**9))
    sink.publish("decision", warm["decision_id"], warm)
    if not sink.spool.wait_acked(1, 60):
        raise SystemExit("broker did not acknowledge the warm-up event within 60 s")
    base = sink.spool.next_seq
    cpu0, t0 = time.process_time(), time.perf_counter()

    def publisher() -> None:
        for b in bodies:
            sink.publish("decision", b["decision_id"], b)

    th = threading.Thread(target=publisher, name="bench-publisher")
    th.start()
    th.join()
    publish_s = time.perf_counter() - t0
    ok = sink.spool.wait_acked(base + n, 300)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    sink.close(10)
    return {
        "events": n,
        "all_acknowledged": ok,
        "kafka_events_per_s": n / elapsed,
        "publish_us": 1e6 * publish_s / n,
        "process_cpu_us_per_event": 1e6 * cpu / n,
        "producer_errors": reg.counter("sidecar_producer_errors_total", "").value,
    }


def bench_files(n: int, work: Path) -> dict[str, Any]:
    bodies = [events.decision_event(sample_decision(i)) for i in range(n)]
    sink = FileSink(
        work / "files",
        {"decision": "sidecar.decisions"},
        Registry(),
        rotate_bytes=64 << 20,
        rotate_interval_s=3600,
        keep_files=100,
    )
    sink.start()
    t = time.perf_counter()
    for b in bodies:
        sink.publish("decision", b["decision_id"], b)
    sink.close()
    return {"files_events_per_s": n / (time.perf_counter() - t)}


def proxy_broker_down(work: Path, duration: float, rate: float) -> int:
    from loadtests import bench_proxy

    dead = f"127.0.0.1:{_free_port()}"
    return bench_proxy.main(
        [
            "--scenario",
            "fast",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--set",
            "sink.kind=kafka",
            "--set",
            f"kafka.bootstrap_servers={dead}",
            "--set",
            f"spool.directory={work / 'proxy-spool'}",
        ]
    )


async def _phase(
    url: str, reqs: list[bytes], rate: float, duration: float, pid: int
) -> dict[str, Any]:
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    res = await run_load(url, reqs, rate, duration)
    out = res.summary()
    out["slowest"] = res.slowest(5)  # when in the phase (s) the tail happened
    out["sidecar_cpu_share"] = (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)
    return out


def _idle_share(pid: int, seconds: float) -> float:
    """The sidecar's CPU, as a share of one core, over `seconds` without load."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)


def proxy_broker_hung(
    duration: float, rate: float, request_timeout_ms: int, delivery_timeout_ms: int
) -> dict[str, Any]:
    """The proxy's tail and the sidecar's CPU before, while and after its broker hangs."""
    import uvloop

    from loadtests.bench_proxy import _metrics, _sidecar_command, write_config
    from loadtests.payloads import V2_PATH, v2_requests
    from loadtests.procs import FastUpstreamProcess, SidecarProcess

    cores = sorted(os.sched_getaffinity(0))
    # As bench_proxy pins: load generator and upstream on one core, the sidecar on another.
    near = {cores[0]} if len(cores) >= 2 else None
    far = {cores[1]} if len(cores) >= 2 else None
    work = Path(tempfile.mkdtemp(prefix="bench-hung-"))
    upstream = FastUpstreamProcess(cpus=near)
    sidecar: SidecarProcess | None = None
    out: dict[str, Any] = {
        "request_timeout_ms": request_timeout_ms,
        "delivery_timeout_ms": delivery_timeout_ms,
        "rate": rate,
        "duration_s": duration,
    }
    try:
        with own_broker(None) as (bootstrap, data):
            broker = int((data / "kafka.pid").read_text())
            config = work / "sidecar.toml"
            write_config(
                config,
                upstream.start(),
                {
                    "sink": {"kind": "kafka"},
                    "kafka": {
                        "bootstrap_servers": bootstrap,
                        "request_timeout_ms": request_timeout_ms,
                        "delivery_timeout_ms": delivery_timeout_ms,
                    },
                    "spool": {"directory": str(work / "spool")},
                    "review": {"db_path": str(work / "review.db")},
                },
            )
            sidecar = SidecarProcess(_sidecar_command(), config, work, work / "sidecar.log", far)
            urls = sidecar.start()
            pid = sidecar.pid
            url = urls["proxy"] + V2_PATH
            reqs = v2_requests(*_host_port(urls["proxy"]))
            uvloop.run(_phase(url, reqs, rate, min(duration, 5.0), pid))  # warm-up
            out["idle_up"] = _idle_share(pid, 5.0)
            out["before"] = uvloop.run(_phase(url, reqs, rate, duration, pid))
            os.kill(broker, signal.SIGSTOP)
            hung_at = time.monotonic()
            try:
                # Past request_timeout_ms: where kafka-python's sender used to spin.
                time.sleep(request_timeout_ms / 1000 + 1.0)
                out["idle_hung"] = _idle_share(pid, 5.0)
                out["hung"] = uvloop.run(_phase(url, reqs, rate, duration, pid))
                # Past delivery_timeout_ms too before the broker comes back.
                left = delivery_timeout_ms / 1000 + 1.0 - (time.monotonic() - hung_at)
                if left > 0:
                    time.sleep(left)
                out["hung_s"] = time.monotonic() - hung_at
                out["lag_at_return"] = _metrics(urls["control"]).get("sidecar_spool_lag_events")
            finally:
                os.kill(broker, signal.SIGCONT)
            back = time.monotonic()
            # Without load first: how long what waited takes to reach the broker.
            deadline = back + 300
            while _metrics(urls["control"]).get("sidecar_spool_lag_events", 1) > 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            out["caught_up_s"] = time.monotonic() - back
            out["after"] = uvloop.run(_phase(url, reqs, rate, duration, pid))
            out["metrics"] = {
                k: v
                for k, v in _metrics(urls["control"]).items()
                if "producer" in k or "spool" in k or "gap" in k
            }
    finally:
        if sidecar is not None:
            sidecar.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("//", 1)[1].rpartition(":")
    return host, int(port)


def report_hung(r: dict[str, Any]) -> str:
    lines = [
        f"broker hung {r['hung_s']:.1f} s (request_timeout_ms {r['request_timeout_ms']}, "
        f"delivery_timeout_ms {r['delivery_timeout_ms']}); {r['rate']:g} req/s, "
        f"{r['duration_s']:g} s per phase",
        f"sidecar CPU without load: broker up {r['idle_up']:.3f} core, hung {r['idle_hung']:.3f} core",
    ]
    for phase in ("before", "hung", "after"):
        p = r[phase]
        lines.append(
            f"{phase:>6}: p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, "
            f"p99.9 {p['p999_ms']:.2f} ms, {p['ok']}/{p['sent']} 2xx, "
            f"sidecar CPU {p['sidecar_cpu_share']:.3f} core"
        )
    lines.append(
        f"p99 hung / before: {r['hung']['p99_ms'] / r['before']['p99_ms']:.2f}x; "
        f"{r['lag_at_return']:.0f} events waiting at the broker's return, all delivered "
        f"{r['caught_up_s']:.1f} s after it"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_sink", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=100_000, help="events per measurement")
    parser.add_argument("--bootstrap", default=None, help="an existing broker (default: start one)")
    parser.add_argument("--linger-ms", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256 * 1024)
    parser.add_argument(
        "--proxy-broker-down",
        action="store_true",
        help="also run the proxy benchmark with the broker down",
    )
    parser.add_argument(
        "--proxy-broker-hung",
        action="store_true",
        help="only the proxy before, while and after its broker hangs (SIGSTOP)",
    )
    parser.add_argument("--hung-request-timeout-ms", type=int, default=3000)
    parser.add_argument("--hung-delivery-timeout-ms", type=int, default=10_000)
    parser.add_argument("--proxy-duration", type=float, default=20.0)
    parser.add_argument("--proxy-rate", type=float, default=500.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    if args.proxy_broker_hung:
        with _exclusive(LOCK_PATH):
            hung = proxy_broker_hung(
                args.proxy_duration,
                args.proxy_rate,
                args.hung_request_timeout_ms,
                args.hung_delivery_timeout_ms,
            )
        hung["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        hung["loadavg_1m_at_end"] = os.getloadavg()[0]
        print(report_hung(hung))
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"sink-hung-{hung['date'].replace(':', '')}.json"
        path.write_text(json.dumps(hung, indent=2))
        print(f"result: {path}")
        return 0

    cores = sorted(os.sched_getaffinity(0))
    # The sink gets one core of its own; the broker (and everything else) the others.
    sink_cpu = {cores[-1]}
    broker_cpus = set(cores[:-1]) or None
    os.sched_setaffinity(0, sink_cpu)
    work = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    load_at_start = os.getloadavg()[0]
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1m_at_start": load_at_start,
            "sink_cpu": sorted(sink_cpu),
        },
        "targets": TARGETS,
    }
    try:
        with _exclusive(LOCK_PATH):
            result["spool"] = bench_spool(args.events, work)
            result["build"] = bench_build(min(args.events, 20_000))
            if args.bootstrap:
                result["kafka"] = bench_kafka(
                    args.events, args.bootstrap, work, args.linger_ms, args.batch_size
                )
            else:
                with own_broker(broker_cpus) as (bootstrap, _):
                    result["kafka"] = bench_kafka(
                        args.events, bootstrap, work, args.linger_ms, args.batch_size
                    )
            result["files"] = bench_files(args.events, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    s, k = result["spool"], result["kafka"]
    print(
        f"machine: {os.cpu_count()} cores, load average {load_at_start:.2f} at start; sink pinned to cpu {sorted(sink_cpu)}"
    )
    print(
        f"event size {s['event_bytes']} B; building + serialising one decision event {result['build']['build_and_serialise_us']:.1f} µs"
    )
    print(
        "spool append µs/event: "
        f"fsync never {s['append_us_fsync_never']:.2f}, interval {s['append_us_fsync_interval']:.2f}, "
        f"always {s['append_us_fsync_always']:.1f}"
    )
    print(
        f"kafka sink: {k['kafka_events_per_s']:,.0f} events/s to acknowledgement "
        f"({k['events']} events, publish {k['publish_us']:.1f} µs each, "
        f"{k['process_cpu_us_per_event']:.1f} µs CPU per event, errors {k['producer_errors']:.0f})"
    )
    print(f"files sink: {result['files']['files_events_per_s']:,.0f} events/s")
    ok = True
    for key, value, limit, better in (
        ("spool_append_us", s["spool_append_us"], TARGETS["spool_append_us"], "<="),
        ("kafka_events_per_s", k["kafka_events_per_s"], TARGETS["kafka_events_per_s"], ">="),
    ):
        passed = value <= limit if better == "<=" else value >= limit
        ok &= passed and bool(k["all_acknowledged"])
        print(f"target {key} {better} {limit:g}: {value:,.2f} {'PASS' if passed else 'FAIL'}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sink-{result['date'].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"result: {path}")
    if args.proxy_broker_down:
        os.sched_setaffinity(0, set(cores))
        print("\nproxy with sink.kind = kafka and the broker down:")
        ok &= proxy_broker_down(work, args.proxy_duration, args.proxy_rate) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
