"""The hub benchmark: ingest into PostgreSQL, lookup latency over many decisions, time to visible.

    python -m loadtests.bench_hub [--events 100000] [--decisions 1000000] [--lookups 5000]
                                  [--rate 500] [--duration 20] [--phases writer,ingest,lookup,visible]
                                  [--consumer confluent[,kafka-python]]
                                  [--database-url URL] [--bootstrap HOST:PORT]
                                  [--pg-set NAME=VALUE ...] [--lookup-database NAME]

1. Write methods (same run, alternating): decision events/s through the hub's writer
   (parse + one transaction per 5,000-event batch) with COPY into a staging table against
   pipelined INSERTs, this process pinned to one core and PostgreSQL on the others.
2. Ingest: events/s from Kafka into PostgreSQL through the hub's consumer (the chosen
   method), pinned to one core (target >= 20,000 events/s), and its process CPU per event:
   JSON decoded in Python (the hub's way) against decoded by PostgreSQL, alternating; with
   `--consumer confluent,kafka-python` also the hub's kafka-python loop of before, same run.
   On the other core: PostgreSQL's and the broker's CPU per event, and the WAL written per
   event with the checkpoints met (full-page images follow each one).
3. Lookup: with `--decisions` stored decisions, GET /decisions/{id} at a running hub over
   HTTP, one client, keep-alive: p50/p99 (target p99 <= 5 ms); the database's share too (the
   one statement, against the three the control plane's lookup makes, same run).
4. Visible: a sidecar (sink.kind = kafka) in front of the fixed-response upstream, a hub, and
   `--rate` calls/s for `--duration` s: time from the proxy's answer to the decision being
   in the hub's database (polled every 5 ms), p50/p99 (target p99 <= 1 s at 500/s).

Without --database-url / --bootstrap it starts PostgreSQL (scripts/postgres.sh) and Kafka
(scripts/kafka.sh) on free ports; `--pg-set` changes that server's settings (the test
server runs without fsync and synchronous commit: `--pg-set fsync=on --pg-set
synchronous_commit=on --pg-set full_page_writes=on` runs a durable one). The settings each
run used are printed and kept with the result, written as JSON to loadtests/results/.
With `--database-url`, `--lookup-database NAME` keeps the lookup phase's decisions in the
database NAME on that server: the first run loads them, later runs with the same
`--decisions` look them up again without the minutes of loading (a way to iterate, and to
alternate two versions of the hub over the same rows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from loadtests.bench_proxy import LOCK_PATH, _exclusive
from loadtests.bench_sink import _free_port, own_broker, sample_decision
from loadtests.procs import (
    FastUpstreamProcess,
    SidecarProcess,
    cpu_seconds,
    cpu_seconds_by_command,
)
from sidecar.hub import schema
from sidecar.hub.db import connect
from sidecar.hub.ingest import DEFAULT_DECODE, Decode, Ingest
from sidecar.hub.rows import Raw, Rows, add
from sidecar.hub.writer import Method, Writer
from sidecar.metrics import Registry
from sidecar.sinks import events

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "loadtests" / "results"
TARGETS = {"ingest_events_per_s": 20_000.0, "lookup_p99_ms": 5.0, "visible_p99_ms": 1000.0}
TOKEN = "bench-reviewer-token-0123"
BATCH = 5000
INGEST_TIMEOUT_S = 600.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def own_postgres(cpus: set[int] | None) -> Iterator[str]:
    parent = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    parent.chmod(0o755)  # as root the server runs as `postgres`, who must reach its folder
    port = _free_port()
    env = dict(os.environ, PG_PORT=str(port), PG_DATA=str(parent / "data"))
    script = str(ROOT / "scripts" / "postgres.sh")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    subprocess.run([script, "start"], env=env, check=True, preexec_fn=pin)
    try:
        yield f"postgresql://sidecar@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([script, "stop"], env=env, check=False)
        shutil.rmtree(parent, ignore_errors=True)


# The server settings every figure depends on, printed and kept with the result: the test
# server (scripts/postgres.sh) runs without fsync and synchronous commit, which a deployment
# must not; `--pg-set` runs the bench with others.
SERVER_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_compression",
    "wal_level",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
)


def server_settings(server_url: str) -> dict[str, str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
            (list(SERVER_SETTINGS),),
        ).fetchall()
    return {str(n): str(v) for n, v in sorted(rows, key=lambda r: SERVER_SETTINGS.index(r[0]))}


def apply_settings(server_url: str, assignments: list[str], timeout_s: float = 10.0) -> None:
    """`ALTER SYSTEM SET` each NAME=VALUE on the bench's own server and reload it; a setting
    the server refuses, or that takes a restart, stops the run naming it."""
    pairs = []
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--pg-set takes NAME=VALUE, got {item!r}")
        pairs.append((name.strip(), value.strip()))
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name, value in pairs:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        conn.execute("SELECT pg_reload_conf()")
    names = [n for n, _ in pairs]
    deadline = time.monotonic() + timeout_s
    while True:
        # A new session reads the reloaded file: `applied` once the server took each setting.
        with psycopg.connect(server_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, applied, error FROM pg_file_settings WHERE name = ANY(%s)"
                " AND sourcefile LIKE '%%postgresql.auto.conf'",
                (names,),
            ).fetchall()
        refused = [f"{n} ({e})" for n, _, e in rows if e is not None]
        if refused:
            raise SystemExit(f"--pg-set: the server did not apply {', '.join(refused)}")
        if len(rows) == len(names) and all(a for _, a, _ in rows):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"--pg-set: not applied after {timeout_s:g} s: {rows}")
        time.sleep(0.1)


def fresh_database(server_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    with connect(url) as conn:
        schema.migrate(conn)
    return url


_RANDOM = ((1 << 80) - 1) & ~((0xF << 76) | (0b11 << 62))
_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)


def messages(n: int, start: int = 0) -> list[bytes]:
    now = time.time()
    out = []
    for i in range(start, start + n):
        d = sample_decision(i)
        d.time = now - (i % (3 * 86_400))  # spread over three or four days' partitions
        # A UUIDv7 of that time, as the sidecar mints it when the call arrives.
        d.call_id = f"{(int(d.time * 1000) << 80) | (random.getrandbits(80) & _RANDOM) | _VERSION_VARIANT:032x}"
        out.append(events.dumps(events.decision_event(d)))
    return out


def bench_writer(url: str, n: int, rounds: int) -> dict[str, Any]:
    """Events/s per write method, alternating A/B so both see the same machine."""
    out: dict[str, list[float]] = {"copy": [], "pipeline": []}
    cpu: dict[str, list[float]] = {"copy": [], "pipeline": []}
    for r in range(rounds):
        for method in ("copy", "pipeline") if r % 2 == 0 else ("pipeline", "copy"):
            msgs = messages(n)
            with connect(url) as conn:
                writer = Writer(conn, method)  # type: ignore[arg-type]
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(0, n, BATCH):
                    rows = Rows()
                    for m in msgs[i : i + BATCH]:
                        add(rows, "decision", m)
                    writer.write(rows)
                out[method].append(n / (time.perf_counter() - t0))
                cpu[method].append((time.process_time() - c0) / n * 1e6)
    return {
        "events": n,
        "batch": BATCH,
        "rounds": rounds,
        **{f"{m}_events_per_s": max(v) for m, v in out.items()},
        **{f"{m}_cpu_us_per_event": min(v) for m, v in cpu.items()},
        "all": out,
    }


ConsumerName = str  # "confluent" (the hub's) or "kafka-python" (the hub's before, for the A/B)
CONSUMERS = ("confluent", "kafka-python")


class _KafkaPythonIngest:
    """The hub's consumer loop as it was on kafka-python (poll, one transaction, commit), kept
    here only to compare with the hub's confluent-kafka one in the same run."""

    def __init__(self, url: str, bootstrap: str, topic: str, group: str, decode: Decode) -> None:
        self._args = (url, bootstrap, topic, group, decode)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from kafka import KafkaConsumer

        url, bootstrap, topic, group, decode = self._args
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        with connect(url) as conn:
            writer = Writer(conn, "copy")
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=200)
                if not polled:
                    continue
                raw = Raw()
                for _tp, records in polled.items():
                    raw.extend("decision", [rec.value for rec in records])
                if decode == "database":
                    writer.write_raw(raw)
                else:
                    writer.write_decoded(raw)
                consumer.commit()
        consumer.close(autocommit=False)


def _ingest_once(
    url: str,
    bootstrap: str,
    topic: str,
    n: int,
    method: Method,
    decode: Decode,
    consumer: ConsumerName,
) -> tuple[float, float, dict[str, float]]:
    """(events/s, process CPU µs per event, the servers' CPU µs per event) of one consumer
    group reading the topic into `url`."""
    from sidecar.config import load_settings

    group = f"bench{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        environ={},
        overrides={
            "kafka": {"bootstrap_servers": bootstrap, "topic_decisions": topic},
            "hub": {"group_id": group, "batch_max_events": BATCH},
        },
    )
    ingest: Ingest | _KafkaPythonIngest
    if consumer == "kafka-python":
        ingest = _KafkaPythonIngest(url, bootstrap, topic, group, decode)
    else:
        ingest = Ingest(
            database_url=url,
            kafka=settings.kafka,
            hub=settings.hub,
            registry=Registry(),
            method=method,
            decode=decode,
        )
    cpu0 = time.process_time()
    others0 = _server_cpu()
    wal0 = _wal(url)
    t0 = time.perf_counter()
    ingest.start()
    try:
        with connect(url) as conn:
            while True:
                row = conn.execute("SELECT count(*) FROM decisions").fetchone()
                if row is not None and row[0] >= n:
                    break
                if time.perf_counter() - t0 > INGEST_TIMEOUT_S:
                    raise RuntimeError(f"{consumer}/{decode}: {row} of {n} events in 10 minutes")
                time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        others = {k: (v - others0[k]) / n * 1e6 for k, v in _server_cpu().items()}
        wal1 = _wal(url)
        others["wal_bytes"] = (wal1[0] - wal0[0]) / n
        others["checkpoints"] = wal1[1] - wal0[1]
    finally:
        ingest.stop()
    return n / elapsed, cpu / n * 1e6, others


def _wal(url: str) -> tuple[float, float]:
    """The server's WAL position in bytes and its checkpoints so far: the run's WAL per event
    (full-page images after each checkpoint included), and how many checkpoints it met."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8,"
            " (checkpoints_timed + checkpoints_req)::float8 FROM pg_stat_bgwriter"
        ).fetchone()
    assert row is not None
    return float(row[0]), float(row[1])


def _server_cpu() -> dict[str, float]:
    """CPU seconds so far of this machine's PostgreSQL processes and Kafka broker (java):
    what the ingest costs on the other core, beside the hub's own."""
    spent = cpu_seconds_by_command(
        lambda name: (
            "postgres" if name.startswith("postgres") else "broker" if name == "java" else None
        )
    )
    return {"postgres": spent.get("postgres", 0.0), "broker": spent.get("broker", 0.0)}


def bench_ingest(
    server: str,
    bootstrap: str,
    n: int,
    method: Method,
    rounds: int,
    consumers: tuple[ConsumerName, ...] = ("confluent",),
) -> dict[str, Any]:
    """Kafka -> PostgreSQL through the hub's consumer, this process on one core: JSON decoded
    by PostgreSQL against decoded here (and, with more than one of `consumers`, each consumer),
    alternating the order every round, fresh database each."""
    from kafka import KafkaProducer

    topic = f"bench{uuid.uuid4().hex[:8]}.decisions"
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024)
    for m in messages(n):
        producer.send(topic, m)
    producer.flush(120)
    producer.close()
    variants = [(c, d) for c in consumers for d in ("database", "python")]
    rate: dict[str, list[float]] = {f"{c}/{d}": [] for c, d in variants}
    cpu: dict[str, list[float]] = {f"{c}/{d}": [] for c, d in variants}
    servers: dict[str, list[dict[str, float]]] = {f"{c}/{d}": [] for c, d in variants}
    for r in range(rounds):
        for c, decode in variants if r % 2 == 0 else variants[::-1]:
            events_per_s, us, spent = _ingest_once(
                fresh_database(server),
                bootstrap,
                topic,
                n,
                method,
                decode,  # type: ignore[arg-type]
                c,
            )
            rate[f"{c}/{decode}"].append(events_per_s)
            cpu[f"{c}/{decode}"].append(us)
            servers[f"{c}/{decode}"].append(spent)
    best = {k: max(v) for k, v in rate.items()}
    least = {k: min(v) for k, v in cpu.items()}
    hub = consumers[0]
    default = f"{hub}/{DEFAULT_DECODE}"
    other = f"{hub}/{'python' if DEFAULT_DECODE == 'database' else 'database'}"
    return {
        "events": n,
        "method": method,
        "rounds": rounds,
        "consumer": hub,
        "decode": DEFAULT_DECODE,
        "ingest_events_per_s": best[default],
        "process_cpu_us_per_event": least[default],
        # On the other core, per event: PostgreSQL's processes and the broker (least of rounds).
        "postgres_cpu_us_per_event": min(o["postgres"] for o in servers[default]),
        "broker_cpu_us_per_event": min(o["broker"] for o in servers[default]),
        "wal_bytes_per_event": min(o["wal_bytes"] for o in servers[default]),
        "checkpoints": max(o["checkpoints"] for o in servers[default]),
        "other_decode_events_per_s": best[other],
        "other_decode_cpu_us_per_event": least[other],
        "variants": {k: {"events_per_s": best[k], "cpu_us_per_event": least[k]} for k in best},
        "all": {"events_per_s": rate, "cpu_us_per_event": cpu},
    }


@contextmanager
def hub_process(
    url: str, bootstrap: str, topics: dict[str, str], log: Path
) -> Iterator[tuple[str, int]]:
    """A `sidecar hub` serving: its address and its process id."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        PYTHONPATH=str(ROOT),
        SIDECAR_HUB__DATABASE_URL=url,
        SIDECAR_HUB__PORT=str(port),
        SIDECAR_HUB__GROUP_ID=f"bench{uuid.uuid4().hex[:8]}",
        SIDECAR_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        SIDECAR_AUTH__TOKENS=json.dumps({TOKEN: {"name": "bench", "role": "reviewer"}}),
        **{f"SIDECAR_KAFKA__{k.upper()}": v for k, v in topics.items()},
    )
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "hub"], env=env, stdout=out, stderr=out
        )
    base = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hub did not start: {log.read_text()[-2000:]}")
            try:
                c = http.client.HTTPConnection(base, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


def _wait_assigned(base: str, partitions: int, timeout_s: float = 60.0) -> float:
    """Seconds until the hub at `base` reports `partitions` assigned partitions."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        c = http.client.HTTPConnection(base, timeout=2)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        for line in text.splitlines():
            if (
                line.startswith("sidecar_hub_partitions_assigned ")
                and float(line.split()[1]) >= partitions
            ):
                return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"the hub did not get {partitions} partitions within {timeout_s:.0f} s")


def load_decisions(url: str, n: int) -> tuple[list[str], float]:
    """n decisions stored through the writer (COPY); their ids and the load's events/s."""
    ids: list[str] = []
    t0 = time.perf_counter()
    chunk = 20_000
    with connect(url) as conn:
        writer = Writer(conn, "copy")
        for start in range(0, n, chunk):
            msgs = messages(min(chunk, n - start), start)
            rows = Rows()
            for m in msgs:
                add(rows, "decision", m)
            ids += [r[2] for r in rows.decisions]
            for i in range(0, len(msgs), BATCH):
                part = Rows(decisions=rows.decisions[i : i + BATCH], days=rows.days)
                writer.write(part)
    rate = n / (time.perf_counter() - t0)
    settle(url)
    return ids, rate


def settle(url: str) -> None:
    """What autovacuum and the checkpointer do after a bulk load, done before the lookups
    rather than during them: a hub that has stored a million decisions over time has had
    its tables vacuumed (visibility map, hint bits) and its dirty pages written. Measured
    straight after the COPY instead, the lookups share the machine with that work (19:44:
    p99 6.08 ms, the statement's 3.96 ms, against 1.8-4.9 and 0.8-1.9 ms on a settled one)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) decisions")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            print("settle: no CHECKPOINT (the role may not); the lookups may meet one")


def lookup_database(server_url: str, name: str, n: int) -> tuple[str, list[str], float | None]:
    """The database NAME on the server, holding n decisions: loaded when new (its URL, the ids,
    the load's events/s), else reused (its ids, None). A database with another count stops the
    run: its figures would not be over n decisions."""
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if exists is None:
        with connect(url) as conn:
            schema.migrate(conn)
        ids, rate = load_decisions(url, n)
        return url, ids, rate
    with connect(url) as conn:
        # In id order, so the seeded picks are the same ids run after run.
        rows = conn.execute("SELECT decision_id FROM decisions ORDER BY decision_id").fetchall()
    if len(rows) != n:
        raise SystemExit(f"--lookup-database {name} holds {len(rows):,} decisions, not {n:,}")
    return url, [str(r[0]) for r in rows], None


def bench_lookup(url: str, base: str, hub_pid: int, ids: list[str], lookups: int) -> dict[str, Any]:
    """The one-statement lookup (`sidecar.hub.lookup_route.find`, rows decoded) against the three
    statements the control plane's lookup made before (item, decision, explanation), alternating
    per id so both see the same machine; then GET /decisions/{id} over HTTP at the hub."""
    from sidecar.hub.db import pool
    from sidecar.hub.lookup import HubDecisions
    from sidecar.hub.lookup_route import find
    from sidecar.hub.review import HubReviewStore

    rng = random.Random(7)
    picks = [rng.choice(ids) for _ in range(lookups)]
    one_ms: list[float] = []
    three_ms: list[float] = []
    p = pool(url, 1)
    try:
        decisions = HubDecisions(p)
        store = HubReviewStore(p, registry=Registry())
        for did in picks:
            t0 = time.perf_counter()
            found = find(p, did)
            t1 = time.perf_counter()
            store.get(did)
            decisions.get_dict(did)
            decisions.get_explanation(did)
            t2 = time.perf_counter()
            if found is None:
                raise RuntimeError(f"{did} was not found")
            one_ms.append((t1 - t0) * 1000)
            three_ms.append((t2 - t1) * 1000)
    finally:
        p.close()
    http_ms: list[float] = []
    conn_http = http.client.HTTPConnection(base, timeout=10)
    headers = {"authorization": f"Bearer {TOKEN}"}
    cpu0 = cpu_seconds(hub_pid)
    for did in picks:
        t0 = time.perf_counter()
        conn_http.request("GET", f"/decisions/{did}", headers=headers)
        resp = conn_http.getresponse()
        resp.read()
        http_ms.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            raise RuntimeError(f"lookup of {did} answered {resp.status}")
    hub_cpu_s = cpu_seconds(hub_pid) - cpu0
    conn_http.close()
    return {
        "stored_decisions": len(ids),
        "lookups": lookups,
        "db_p50_ms": _pct(one_ms, 0.5),
        "db_p99_ms": _pct(one_ms, 0.99),
        "db_three_p50_ms": _pct(three_ms, 0.5),
        "db_three_p99_ms": _pct(three_ms, 0.99),
        "lookup_p50_ms": _pct(http_ms, 0.5),
        "lookup_p99_ms": _pct(http_ms, 0.99),
        "lookup_p999_ms": _pct(http_ms, 0.999),
        "hub_cpu_us_per_lookup": hub_cpu_s / lookups * 1e6,
    }


def bench_visible(
    url: str, bootstrap: str, rate: float, duration: float, work: Path
) -> dict[str, Any]:
    topics = {
        "topic_decisions": f"vis{uuid.uuid4().hex[:8]}.decisions",
        "topic_explanations": f"vis{uuid.uuid4().hex[:8]}.explanations",
        "topic_reviews": f"vis{uuid.uuid4().hex[:8]}.reviews",
    }
    # Created first, as a deployment's are: a topic that appears while the hub runs reaches
    # its consumer at the next metadata refresh and moves the group's partitions then.
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
    finally:
        admin.close()
    upstream = FastUpstreamProcess()
    up_url = upstream.start()
    config = work / "sidecar.toml"
    proxy_port, control_port = _free_port(), _free_port()
    config.write_text(
        f"""
[proxy]
port = {proxy_port}
upstream = "{up_url}"
[control]
port = {control_port}
[sink]
kind = "kafka"
[kafka]
bootstrap_servers = "{bootstrap}"
topic_decisions = "{topics["topic_decisions"]}"
topic_explanations = "{topics["topic_explanations"]}"
topic_reviews = "{topics["topic_reviews"]}"
[spool]
directory = "{work / "spool"}"
[review]
enabled = false
"""
    )
    sidecar = SidecarProcess(
        [sys.executable, "-m", "sidecar.cli"], config, ROOT, work / "sidecar.log", None
    )
    answered: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()
    done = threading.Event()
    try:
        urls = sidecar.start()
        with hub_process(url, bootstrap, topics, work / "hub.log") as (hub, _):
            # Ready is not yet consuming: the measurement starts once the group has given the
            # hub its three partitions (the settling time is reported apart).
            settle_s = _wait_assigned(hub, 3)

            def poll() -> None:
                with connect(url) as conn:
                    while not done.is_set() or len(seen) < len(answered):
                        with lock:
                            pending = [d for d in answered if d not in seen]
                        if pending:
                            rows = conn.execute(
                                "SELECT decision_id FROM decisions WHERE decision_id = ANY(%s)",
                                (pending,),
                            ).fetchall()
                            now = time.time()
                            for (did,) in rows:
                                seen.setdefault(str(did), now)
                        time.sleep(0.005)
                        if done.is_set() and time.time() - last[0] > 30:
                            return

            last = [time.time()]
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            host, port = urls["proxy"].removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            body = b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}]}'
            interval = 1.0 / rate
            t_next = time.perf_counter()
            end = t_next + duration
            while t_next < end:
                delay = t_next - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                conn.request(
                    "POST",
                    "/v2/models/m/infer",
                    body=body,
                    headers={"content-type": "application/json"},
                )
                resp = conn.getresponse()
                resp.read()
                did = resp.getheader("x-decision-id")
                if did:
                    with lock:
                        answered[f"{did}/0"] = time.time()
                t_next += interval
            last[0] = time.time()
            done.set()
            poller.join(60)
    finally:
        sidecar.stop()
        upstream.stop()
    lat = [(seen[d] - t) * 1000 for d, t in answered.items() if d in seen]
    return {
        "hub_settle_s": settle_s,
        "rate": rate,
        "duration_s": duration,
        "answered": len(answered),
        "visible": len(lat),
        "visible_p50_ms": _pct(lat, 0.5) if lat else float("nan"),
        "visible_p99_ms": _pct(lat, 0.99) if lat else float("nan"),
        "visible_max_ms": max(lat) if lat else float("nan"),
    }


PHASES = ("writer", "ingest", "lookup", "visible")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_hub", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds of the write methods")
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, of {', '.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--consumer",
        default="confluent",
        help="ingest: comma-separated, of confluent (the hub's), kafka-python (its old one);"
        " more than one compares them in the same run (default: confluent)",
    )
    parser.add_argument("--database-url", default=None, help="a server to create databases on")
    parser.add_argument(
        "--pg-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the server the bench starts (repeatable; ALTER SYSTEM"
        " and reload), e.g. --pg-set fsync=on --pg-set synchronous_commit=on",
    )
    parser.add_argument(
        "--lookup-database",
        default=None,
        metavar="NAME",
        help="with --database-url: the lookup phase's database, loaded once and reused by the"
        " runs after (with the same --decisions)",
    )
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not phases or phases - set(PHASES):
        parser.error(f"--phases takes {', '.join(PHASES)}")
    if args.pg_set and args.database_url:
        parser.error("--pg-set applies only to the server the bench starts (no --database-url)")
    if args.lookup_database and not args.database_url:
        parser.error("--lookup-database keeps a database on a server of yours (--database-url)")
    consumers = tuple(c.strip() for c in args.consumer.split(",") if c.strip())
    if not consumers or set(consumers) - set(CONSUMERS):
        parser.error(f"--consumer takes {', '.join(CONSUMERS)}")

    cores = sorted(os.sched_getaffinity(0))
    one, others = {cores[-1]}, set(cores[:-1]) or None
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1m_at_start": os.getloadavg()[0],
            "hub_cpu": sorted(one),
        },
        "targets": TARGETS,
    }
    try:
        with (
            _exclusive(LOCK_PATH),
            contextmanager_or(args.database_url, own_postgres, others) as pg,
            contextmanager_or(args.bootstrap, broker, others) as bootstrap,
        ):
            if args.pg_set:
                apply_settings(pg, args.pg_set)
            result["postgres_settings"] = server_settings(pg)
            method: Method = "copy"
            if "writer" in phases:
                os.sched_setaffinity(0, one)
                result["writer"] = w = bench_writer(fresh_database(pg), args.events, args.rounds)
                if w["pipeline_events_per_s"] > w["copy_events_per_s"]:
                    method = "pipeline"
            if "ingest" in phases:
                os.sched_setaffinity(0, one)
                result["ingest"] = bench_ingest(
                    pg, bootstrap, args.events, method, args.rounds, consumers
                )
            os.sched_setaffinity(0, set(cores))
            if "lookup" in phases:
                load_rate: float | None
                if args.lookup_database:
                    url, ids, load_rate = lookup_database(pg, args.lookup_database, args.decisions)
                else:
                    url = fresh_database(pg)
                    ids, load_rate = load_decisions(url, args.decisions)
                empty = {k: f"{k}.unused" for k in ("topic_decisions", "topic_explanations")}
                empty["topic_reviews"] = "reviews.unused"
                with hub_process(url, bootstrap, empty, work / "hub-lookup.log") as (base, pid):
                    result["lookup"] = bench_lookup(url, base, pid, ids, args.lookups)
                result["lookup"]["load_events_per_s"] = load_rate
            if "visible" in phases:
                result["visible"] = bench_visible(
                    fresh_database(pg), bootstrap, args.rate, args.duration, work
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, load {result['machine']['loadavg_1m_at_start']:.2f}")
    if "postgres_settings" in result:
        print(
            "PostgreSQL: " + ", ".join(f"{k}={v}" for k, v in result["postgres_settings"].items())
        )
    checks: list[tuple[str, float, str]] = []
    if "writer" in result:
        w = result["writer"]
        print(
            f"writer, one core, batches of {BATCH}: copy {w['copy_events_per_s']:,.0f} events/s,"
            f" pipeline {w['pipeline_events_per_s']:,.0f} events/s (best of {w['rounds']} alternating);"
            f" hub CPU per event: copy {w['copy_cpu_us_per_event']:.1f} µs,"
            f" pipeline {w['pipeline_cpu_us_per_event']:.1f} µs"
        )
    if "ingest" in result:
        i = result["ingest"]
        other = "python" if i["decode"] == "database" else "database"
        print(
            f"ingest Kafka -> PostgreSQL ({i['consumer']}, {i['method']}, decoded by {i['decode']}),"
            f" one core: {i['ingest_events_per_s']:,.0f}"
            f" events/s, {i['process_cpu_us_per_event']:.1f} µs CPU per event"
            f" (implies {1e6 / i['process_cpu_us_per_event']:,.0f} events/s on a free core);"
            f" decoded by {other} instead: {i['other_decode_events_per_s']:,.0f} events/s,"
            f" {i['other_decode_cpu_us_per_event']:.1f} µs (best of {i['rounds']} alternating)"
        )
        pg_us, broker_us = i["postgres_cpu_us_per_event"], i["broker_cpu_us_per_event"]
        print(
            f"  on the other core, per event: PostgreSQL {pg_us:.1f} µs, the broker {broker_us:.1f} µs"
            f" (together {1e6 / max(pg_us + broker_us, 1e-9):,.0f} events/s for that core);"
            f" WAL {i['wal_bytes_per_event']:,.0f} bytes per event,"
            f" {i['checkpoints']:.0f} checkpoints at most in a round"
        )
        for name, v in i["variants"].items():
            print(
                f"  {name}: {v['events_per_s']:,.0f} events/s, {v['cpu_us_per_event']:.1f} µs CPU per event"
            )
        checks.append(("ingest_events_per_s", i["ingest_events_per_s"], ">="))
    if "lookup" in result:
        lk = result["lookup"]
        print(
            f"lookup over {lk['stored_decisions']:,} decisions: HTTP p50 {lk['lookup_p50_ms']:.2f} ms"
            f" p99 {lk['lookup_p99_ms']:.2f} ms p99.9 {lk['lookup_p999_ms']:.2f} ms, the hub's CPU"
            f" {lk['hub_cpu_us_per_lookup']:.0f} µs per lookup; the one statement p50 {lk['db_p50_ms']:.2f} ms"
            f" p99 {lk['db_p99_ms']:.2f} ms (the three it replaced: p50 {lk['db_three_p50_ms']:.2f}"
            f" ms p99 {lk['db_three_p99_ms']:.2f} ms); "
            + (
                "reused a loaded database"
                if lk["load_events_per_s"] is None
                else f"loaded at {lk['load_events_per_s']:,.0f} events/s"
            )
        )
        checks.append(("lookup_p99_ms", lk["lookup_p99_ms"], "<="))
    ok = True
    if "visible" in result:
        v = result["visible"]
        print(
            f"visible at the hub, {v['rate']:.0f}/s for {v['duration_s']:.0f} s (after the hub"
            f" held its partitions, {v['hub_settle_s']:.1f} s from ready): {v['visible']}/{v['answered']},"
            f" p50 {v['visible_p50_ms']:.0f} ms p99 {v['visible_p99_ms']:.0f} ms max {v['visible_max_ms']:.0f} ms"
        )
        checks.append(("visible_p99_ms", v["visible_p99_ms"], "<="))
        ok = v["visible"] == v["answered"]
    for key, value, better in checks:
        limit = TARGETS[key]
        passed = value <= limit if better == "<=" else value >= limit
        ok &= passed
        print(f"target {key} {better} {limit:g}: {value:,.2f} {'PASS' if passed else 'FAIL'}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"hub-{result['date'].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"result: {path}")
    return 0 if ok else 1


@contextmanager
def broker(cpus: set[int] | None) -> Iterator[str]:
    """A broker of our own for the run: its bootstrap address."""
    with own_broker(cpus) as (bootstrap, _):
        yield bootstrap


@contextmanager
def contextmanager_or(given: str | None, start: Any, cpus: set[int] | None) -> Iterator[str]:
    """`given` when set, else what `start(cpus)` runs for the duration."""
    if given:
        yield given
        return
    with start(cpus) as value:
        yield value


if __name__ == "__main__":
    raise SystemExit(main())
