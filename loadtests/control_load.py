"""Control-plane work that must not reach the proxy's tail (bench_proxy `--control-load`).

While it runs: `/metrics` is scraped every second, a reviewer's console is open
(its queue page and one item fetched every second, as the console does when a
reviewer works the queue, `console_offset` seconds after each scrape: a Prometheus
and a browser tick on their own clocks; 0 puts the two calls in one burst), and
`sidecar audit verify` runs (niced, on the sidecar's core) over a review database
pre-filled with `items` review items and an audit chain of `chain` records. Each of
these used to run on (or lock against) the loop that forwards inference calls.

The verify is one long check, as an operator runs it: started before the rounds and
paused (SIGSTOP) between the `+control` rounds, so each of them measures a check under
way. Started afresh in every round, its start-up (a burst of imports on the sidecar's
core, measured on its own by `loadtests.burst`) fell inside every round's window.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtests.procs import has_open
from sidecar.decisions import Decision
from sidecar.demo.model import model_settings
from sidecar.metrics import Registry
from sidecar.review import audit
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks.null import NullSink

TOKEN = "bench-reviewer-token"
_REPO = Path(__file__).resolve().parent.parent


def prepare(work: Path, items: int, chain: int = 0) -> dict[str, dict[str, Any]]:
    """Fill a review database with `items` queued items and an audit chain of at least
    `chain` records, and write a tokens file; the sidecar settings that use them."""
    db = work / "review.db"
    registry = Registry()
    names = list(model_settings()["feature_names"])
    store = SqliteReviewStore(db, sink=NullSink(registry), registry=registry)
    try:
        now = time.time()
        for i in range(items):
            store.enqueue(
                Decision(
                    call_id=f"bench{i:08d}",
                    row=0,
                    time=now,
                    protocol="v2",
                    model_name="credit",
                    model_version="1",
                    # The demo model's features, so the console's item page gets its
                    # explanation as a reviewer's does (made once, kept on the item); the
                    # names f0..f7 used until 2026-11-30 made every page a failed one.
                    features=[0.5] * len(names),
                    feature_names=names,
                    prediction=0,
                    probabilities=[0.45, 0.55],
                    confidence=0.55,
                    upstream_status=200,
                    upstream_latency_ms=1.0,
                    group_attributes={"gender": "F" if i % 2 else "M"},
                    review="queued",
                    review_reason="low_confidence",
                )
            )
    finally:
        store.close()
    _extend_chain(db, chain)
    tokens = work / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {TOKEN: {"name": "bench", "role": "admin"}}}))
    return {"review": {"db_path": str(db)}, "auth": {"tokens_file": str(tokens)}}


def _extend_chain(db: Path, records: int) -> None:
    """Lengthen the audit chain to `records` with the history of a long-lived deployment:
    items requested, claimed and approved, since purged from the queue (a check reads the
    chain, not the items). One transaction: 576,000 records took 7.5 s here."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            prev = audit.head(conn)
            now = time.time()
            rows = []
            for n in range(prev[0], records):
                item = f"hist{n // 3:08d}"
                action, actor, data = (
                    ("requested", "system", {"reason": "low_confidence", "mode": "async"}),
                    ("claimed", "bench", {"lease_expires": now + 300.0}),
                    ("approved", "bench", {"reason": "checked", "outcome": 0}),
                )[n % 3]
                rec, row = audit.next_record(prev, now, item, item, action, actor, data)
                prev = (rec.seq, rec.hash)
                rows.append(row)
            conn.executemany(audit.INSERT, rows)
    finally:
        conn.close()


PARTS = ("metrics", "console", "verify")
# Not in the default set: `/healthz` every second, a quarter of a second after each scrape: a
# control call that does no work of its own (the framework's floor), so one run tells what a
# call's work sets off from what any call does.
FLOOR_PART = "floor"
FLOOR_OFFSET_S = 0.25
# Seconds from each scrape to the console's calls (module doc).
CONSOLE_OFFSET_S = 0.5


class _Verifier:
    """`audit verify` under way through the `+control` rounds and paused (SIGSTOP) between
    them; a check that ends is started again at once (`prepare`'s `chain` sizes one check
    to the run, so that is rare: `verify_starts` says how often it happened)."""

    def __init__(self, command: list[str], cpus: set[int] | None, db: str) -> None:
        self._command = command
        self._cpus = cpus
        self._db = db
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._closed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self.counts = {"verify_starts": 0, "verifies": 0, "failures": 0}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._running.wait()
            with self._lock:
                if self._closed:
                    return
                proc = subprocess.Popen(
                    self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                if self._cpus:
                    os.sched_setaffinity(proc.pid, self._cpus)
                if not self._running.is_set():
                    proc.send_signal(signal.SIGSTOP)
                self._proc = proc
                self.counts["verify_starts"] += 1
            done = proc.wait()
            with self._lock:
                self._proc = None
                if self._closed:
                    return
                self.counts["verifies" if done == 0 else "failures"] += 1

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(sig)

    def resume(self) -> None:
        with self._lock:
            self._running.set()
            self._signal(signal.SIGCONT)

    def pause(self) -> None:
        with self._lock:
            self._running.clear()
            self._signal(signal.SIGSTOP)

    def start_paused(self, timeout: float = 30.0) -> None:
        """Start the check and pause it once it reads the chain (its start-up done)."""
        self.resume()
        deadline = time.monotonic() + timeout
        while not self._reading():
            if time.monotonic() > deadline:
                raise RuntimeError(f"audit verify did not open {self._db} in {timeout} s")
            time.sleep(0.05)
        self.pause()

    def _reading(self) -> bool:
        proc = self._proc
        return proc is not None and has_open(proc.pid, self._db)

    def take_counts(self) -> dict[str, int]:
        with self._lock:
            counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._running.set()
            self._signal(signal.SIGCONT)
            if self._proc is not None:
                self._proc.terminate()
        self._thread.join(30)


class _Worker:
    """The control-plane work itself, in threads, until `stop`: what `python -m
    loadtests.control_load` runs."""

    def __init__(self, control_url: str, parts: tuple[str, ...], console_offset: float) -> None:
        self._url = control_url.rstrip("/")
        self._parts = parts
        self._console_offset = console_offset
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counts = {"scrapes": 0, "console_calls": 0, "floor_calls": 0, "failures": 0}
        # Each call's start and end (`time.perf_counter()`, the machine's monotonic clock):
        # the harness lines the slowest requests up against them.
        self.calls: dict[str, list[tuple[float, float]]] = {}

    def _every_second(self, paths: list[str], counter: str, offset: float = 0.0) -> None:
        # One keep-alive connection per client, as Prometheus and a browser hold one (until
        # 2026-12-01 13:30 each call opened its own: a TCP handshake and uvicorn's
        # connection set-up on the sidecar's core per call, which neither client does).
        url = urlsplit(self._url)
        conn: http.client.HTTPConnection | None = None
        self._stop.wait(offset)
        while not self._stop.is_set():
            t0 = time.monotonic()
            for path in paths:
                began = time.perf_counter()
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(url.netloc, timeout=30)
                    conn.request("GET", path, headers={"authorization": f"Bearer {TOKEN}"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        raise OSError(f"{path} answered {resp.status}")
                    self.counts[counter] += 1
                    self.calls.setdefault(path, []).append((began, time.perf_counter()))
                except (OSError, http.client.HTTPException):
                    self.counts["failures"] += 1
                    if conn is not None:
                        conn.close()
                    conn = None
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))
        if conn is not None:
            conn.close()

    def start(self) -> None:
        console = ["/review/items?limit=50", "/review/items/bench00000001/0"]
        jobs: dict[str, tuple[Callable[..., None], tuple[Any, ...]]] = {
            "metrics": (self._every_second, (["/metrics"], "scrapes")),
            "console": (self._every_second, (console, "console_calls", self._console_offset)),
            FLOOR_PART: (self._every_second, (["/healthz"], "floor_calls", FLOOR_OFFSET_S)),
        }
        for part in self._parts:
            if part not in jobs:
                continue
            fn, args = jobs[part]
            t = threading.Thread(target=fn, args=args, daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


class ControlLoad:
    """The control-plane work of the `+control` rounds, done by a process of its own (its
    HTTP clients in the load generator's process would take that process's interpreter and
    delay the generator's own sends, charging the `+control` path for them). The process is
    started once, by `open`, before the rounds, and runs under SCHED_IDLE: starting an
    interpreter in each round cost the generator's core a second of imports (an A=A run,
    no work in the +control rounds, read 1.9x at p99). `open` also starts the verify and
    pauses it once it reads the chain (`_Verifier`). `start` and `stop` bracket a round;
    `counts` sums what it did."""

    def __init__(
        self,
        control_url: str,
        sidecar_command: list[str],
        db: Path,
        verify_cpus: set[int] | None = None,
        parts: tuple[str, ...] = PARTS,
        client_cpus: set[int] | None = None,
        verify_pace: float | None = None,
        console_offset: float = CONSOLE_OFFSET_S,
    ) -> None:
        # An operator's command run beside the sidecar (`kubectl exec` shares its container's
        # CPU): niced, on the sidecar's core unless told otherwise. `audit verify` lowers its
        # own check's priority further (SCHED_IDLE) and paces it (its default unless
        # `verify_pace` is given; 0: flat out).
        verify = ["nice", "-n", "19", *sidecar_command, "audit", "verify", "--db", str(db)]
        if verify_pace is not None:
            verify += ["--max-records-per-s", str(verify_pace)]
        self._spec = json.dumps(
            {
                "url": control_url,
                "verify": verify,
                "parts": list(parts),
                "verify_cpus": sorted(verify_cpus) if verify_cpus else None,
                "db": os.path.realpath(db),
                "console_offset": console_offset,
            }
        )
        # Prometheus and a reviewer's browser are outside the pod: the load generator's core.
        self._client_cpus = client_cpus
        self._proc: subprocess.Popen[str] | None = None
        self.counts = {
            "scrapes": 0,
            "console_calls": 0,
            "verify_starts": 0,
            "verifies": 0,
            "failures": 0,
        }
        # Each path's calls, as `_Worker.calls`.
        self.calls: dict[str, list[tuple[float, float]]] = {}

    def open(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.control_load", self._spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_REPO,
        )
        os.sched_setscheduler(proc.pid, os.SCHED_IDLE, os.sched_param(0))
        if self._client_cpus:
            os.sched_setaffinity(proc.pid, self._client_cpus)
        self._proc = proc
        self._ask("ready")

    def _ask(self, line: str) -> str:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the control-load process ended (asked {line!r})")
        return answer

    def start(self) -> None:
        if self._proc is None:
            self.open()
        self._ask("start")

    def stop(self) -> None:
        done = json.loads(self._ask("stop"))
        for path, calls in done.pop("calls", {}).items():
            self.calls.setdefault(path, []).extend((float(s), float(e)) for s, e in calls)
        for k, v in done.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(60)


def main(argv: list[str]) -> int:
    """Lines on stdin: `ready` (answered once a verify, when asked for, is under way and
    paused), `start` (the work begins), `stop` (it ends; its counts are the answer, a JSON
    line); end of input ends the process."""
    spec = json.loads(argv[0])
    cpus = set(spec["verify_cpus"]) if spec["verify_cpus"] else None
    parts = tuple(spec["parts"])
    verifier: _Verifier | None = None
    worker: _Worker | None = None
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "ready" and verifier is None and "verify" in parts:
                verifier = _Verifier(spec["verify"], cpus, spec["db"])
                verifier.start_paused()
                answer = cmd
            elif cmd == "start":
                worker = _Worker(spec["url"], parts, spec["console_offset"])
                worker.start()
                if verifier is not None:
                    verifier.resume()
                answer = "started"
            elif cmd == "stop" and worker is not None:
                if verifier is not None:
                    verifier.pause()
                worker.stop()
                counts: dict[str, Any] = dict(worker.counts)
                if verifier is not None:
                    for k, v in verifier.take_counts().items():
                        counts[k] = counts.get(k, 0) + v
                counts["calls"] = worker.calls
                answer = json.dumps(counts)
                worker = None
            else:
                answer = cmd
            print(answer, flush=True)
    finally:
        if worker is not None:
            worker.stop()
        if verifier is not None:
            verifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
