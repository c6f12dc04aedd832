"""The control-plane load's own pieces: the review database it fills and the long
`audit verify` it pauses between rounds (real `sidecar audit verify` processes)."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from loadtests.control_load import _Verifier, prepare
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
