"""Control-plane work that must not reach the proxy's tail (bench_proxy `--control-load`).

While it runs: `/metrics` is scraped every second, a reviewer's console is open
(its queue page and one item fetched every second, as the console does when a
reviewer works the queue), and `sidecar audit verify` runs back to back (niced, on the sidecar's core) over a
review database pre-filled with `items` review items. Each of these used to run
on (or lock against) the loop that forwards inference calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks.null import NullSink

TOKEN = "bench-reviewer-token"


def prepare(work: Path, items: int) -> dict[str, dict[str, Any]]:
    """Fill a review database and write a tokens file; the sidecar settings that use them."""
    db = work / "review.db"
    registry = Registry()
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
                    features=[0.5] * 8,
                    feature_names=[f"f{j}" for j in range(8)],
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
    tokens = work / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {TOKEN: {"name": "bench", "role": "admin"}}}))
    return {"review": {"db_path": str(db)}, "auth": {"tokens_file": str(tokens)}}


class ControlLoad:
    """Runs the control-plane work in threads between `start` and `stop`; counts what it did."""

    def __init__(
        self,
        control_url: str,
        sidecar_command: list[str],
        db: Path,
        verify_cpus: set[int] | None = None,
    ) -> None:
        self._url = control_url.rstrip("/")
        # An operator's command run beside the sidecar (`kubectl exec` shares its container's
        # CPU): niced, on the sidecar's core. On the load generator's core it would delay the
        # generator's own wake-ups, and the +control path would be charged for that.
        self._verify = ["nice", "-n", "19", *sidecar_command, "audit", "verify", "--db", str(db)]
        self._verify_cpus = verify_cpus
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counts = {"scrapes": 0, "console_calls": 0, "verifies": 0, "failures": 0}

    def _get(self, path: str) -> None:
        req = urllib.request.Request(self._url + path)
        req.add_header("authorization", f"Bearer {TOKEN}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def _every_second(self, paths: list[str], counter: str) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            for path in paths:
                try:
                    self._get(path)
                    self.counts[counter] += 1
                except OSError:
                    self.counts["failures"] += 1
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    def _verifying(self) -> None:
        while not self._stop.is_set():
            proc = subprocess.Popen(
                self._verify, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._verify_cpus:
                os.sched_setaffinity(proc.pid, self._verify_cpus)
            done = proc.wait()
            self.counts["verifies" if done == 0 else "failures"] += 1

    def start(self) -> None:
        self._stop.clear()
        console = ["/review/items?limit=50", "/review/items/bench00000001/0"]
        self._threads = [
            threading.Thread(target=self._every_second, args=(["/metrics"], "scrapes")),
            threading.Thread(target=self._every_second, args=(console, "console_calls")),
            threading.Thread(target=self._verifying),
        ]
        for t in self._threads:
            t.daemon = True
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
