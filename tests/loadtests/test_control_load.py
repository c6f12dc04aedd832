"""The control-plane load's own pieces: the review database it fills, the long
`audit verify` it pauses between rounds (real `sidecar audit verify` processes) and its
HTTP clients."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from loadtests.control_load import TOKEN, _Verifier, _Worker, prepare
from sidecar.review import audit
from tests.servers import wait_until


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_prepare_lengthens_the_chain_with_records_that_verify(tmp_path: Path) -> None:
    prepare(tmp_path, 10, chain=1000)
    conn = sqlite3.connect(tmp_path / "review.db")
    try:
        items = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        result = audit.verify(conn, None, 0)
    finally:
        conn.close()
    assert items == 10
    assert result.ok, result.error
    assert result.count == 1000


def test_the_verify_is_paused_between_rounds_and_resumed_in_them(tmp_path: Path) -> None:
    prepare(tmp_path, 10, chain=5000)
    db = os.path.realpath(tmp_path / "review.db")
    # 50 records a second: 100 s for the chain, so the one check lasts the test.
    command = [sys.executable, "-m", "sidecar.cli", "audit", "verify", "--db", db]
    verifier = _Verifier([*command, "--max-records-per-s", "50"], None, db)
    try:
        verifier.start_paused()
        proc = verifier._proc
        assert proc is not None
        wait_until(lambda: _state(proc.pid) == "T", 10, "the check stopped")
        verifier.resume()
        wait_until(lambda: _state(proc.pid) != "T", 10, "the check running")
        verifier.pause()
        wait_until(lambda: _state(proc.pid) == "T", 10, "the check stopped")
        assert verifier.take_counts() == {"verify_starts": 1, "verifies": 0, "failures": 0}
        assert verifier._proc is proc  # one check throughout, not one a round
    finally:
        verifier.close()
    assert proc.poll() is not None


def test_a_check_that_ends_is_started_again_and_counted(tmp_path: Path) -> None:
    prepare(tmp_path, 10)
    db = os.path.realpath(tmp_path / "review.db")
    command = [sys.executable, "-m", "sidecar.cli", "audit", "verify", "--db", db]
    verifier = _Verifier([*command, "--max-records-per-s", "0"], None, db)
    try:
        verifier.resume()
        wait_until(lambda: verifier.counts["verifies"] >= 2, 30, "two checks done")
        verifier.pause()
        counts = verifier.take_counts()
    finally:
        verifier.close()
    assert counts["failures"] == 0
    assert counts["verify_starts"] >= counts["verifies"] >= 2


def _worked_against(
    handler: type[BaseHTTPRequestHandler],
    console_offset: float,
    done: Callable[[_Worker], bool],
    what: str,
) -> _Worker:
    """A `_Worker` (scrapes and console) run against a server of `handler` until `done`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        worker = _Worker(url, ("metrics", "console"), console_offset)
        worker.start()
        wait_until(lambda: done(worker), timeout_s=10, what=what)
        worker.stop()
    finally:
        server.shutdown()
        server.server_close()
    return worker


def test_the_clients_keep_one_connection_each_and_count_what_fails() -> None:
    seen: dict[str, int] = {"connections": 0}
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn serves

        def setup(self) -> None:
            super().setup()
            seen["connections"] += 1

        def do_GET(self) -> None:
            paths.append(self.path)
            ok = self.headers["authorization"] == f"Bearer {TOKEN}" and "items/" not in self.path
            body = b"ok"
            self.send_response(200 if ok else 500)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    worker = _worked_against(
        Handler,
        0.0,
        lambda w: w.counts["scrapes"] >= 2 and w.counts["failures"] >= 2,
        "two scrapes and two failed item pages",
    )
    # The item page answered 500: each is a failure, and its client connects afresh.
    assert worker.counts["failures"] == worker.counts["console_calls"] >= 2
    assert paths.count("/metrics") == worker.counts["scrapes"]
    scrapes, items = worker.counts["scrapes"], worker.counts["failures"]
    # One connection for the scrapes and one for the console, plus one per failed item.
    assert seen["connections"] <= 2 + items and scrapes >= 2
    # Each call that answered is timed, by path, for the harness to line the tail up with.
    assert len(worker.calls["/metrics"]) == scrapes
    assert "/review/items/bench00000001/0" not in worker.calls
    assert all(0 <= end - start < 10 for start, end in worker.calls["/metrics"])


def test_the_console_ticks_its_offset_after_the_scrape() -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    worker = _worked_against(
        Handler, 0.4, lambda w: w.counts["console_calls"] >= 4, "two seconds of console calls"
    )
    scrapes = [start for start, _ in worker.calls["/metrics"]]
    pages = [start for start, _ in worker.calls["/review/items?limit=50"]]
    # Each queue page about 0.4 s after the scrape before it, never in the same burst (wide
    # bounds: a busy machine may start a thread late, never by a whole offset both ways).
    for page in pages:
        gap = page - max((s for s in scrapes if s <= page), default=page - 1.0)
        assert 0.2 < gap < 0.8
