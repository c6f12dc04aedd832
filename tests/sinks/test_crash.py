"""The crash ledger: answered = decisions in the spool + decisions reported lost, whenever the kill lands."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from sidecar.metrics import Registry
from sidecar.sinks.crash import ANSWERED, FILE_NAME, HANDED, SIZE, CrashLedger
from sidecar.sinks.spool import Spool
from tests.sinks.test_spool import read_all

# A writer shaped like the sidecar: the data plane counts a call's decisions as it answers,
# the pipeline writes them to the spool a poll later; a restart writes the previous run's
# loss as a gap record first. It prints a line per 500 decisions written.
WRITER = """
import sys, orjson
from pathlib import Path
from sidecar.metrics import Registry
from sidecar.sinks.crash import ANSWERED, CrashLedger
from sidecar.sinks.spool import Spool

d = Path(sys.argv[1])
sp = Spool(d, Registry(), max_bytes=1 << 30, segment_bytes=64 * 1024, fsync="never")
sp.open()
crash = CrashLedger(d)
loss = crash.open(sp.next_seq)
sp.crash = crash
if loss is not None:
    body = orjson.dumps({"lost": loss.decisions, "reason": loss.reason})
    sp.append("gap", "g", "gap-%d" % sp.next_seq, "t", body, force=True, counted=loss.decisions)
i = 0
while True:
    calls = [3, 1, 2, 1, 4]  # rows per call
    for n in calls:
        crash.counts[ANSWERED] += n
    for n in calls:
        for row in range(n):
            sp.append("decision", "k", "e%d" % i, "t", orjson.dumps({"i": i}), counted=1)
            i += 1
            if i % 500 == 0:
                print(i, flush=True)
"""


def raw_counts(directory: Path) -> tuple[int, int]:
    """(answered, handed) as the file holds them, before a ledger settles them."""
    with open(directory / FILE_NAME, "r+b") as f, mmap.mmap(f.fileno(), SIZE) as m:
        q = memoryview(m).cast("q")
        try:
            return q[ANSWERED], q[HANDED]
        finally:
            q.release()


def test_sigkill_at_any_point_leaves_every_answered_decision_written_or_reported(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # Killed after different amounts of work, each restart on the same spool and ledger.
    for lines in (1, 3, 2, 5, 1):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        for _ in range(lines):
            assert child.stdout.readline(), "the writer died"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()

    answered, _ = raw_counts(directory)
    sp = Spool(directory, Registry(), max_bytes=1 << 30, segment_bytes=64 * 1024, fsync="never")
    sp.open()
    try:
        records = read_all(sp)
        ledger = CrashLedger(directory)
        loss = ledger.open(sp.next_seq)
    finally:
        sp.close()
    written = sum(r.kind == "decision" for r in records)
    gaps = [orjson.loads(r.body) for r in records if r.kind == "gap"]
    reported = [g["reason"] for g in gaps]
    lost_before = sum(g["lost"] for g in gaps)
    lost_now = loss.decisions if loss is not None else 0
    # A kill nearly always lands with calls answered and not yet written.
    assert len(gaps) <= 4 and set(reported) <= {"crashed"}
    assert lost_before + lost_now > 0
    assert loss is None or loss.reason == "crashed"
    assert written + lost_before + lost_now == answered


def test_an_announced_record_counts_only_if_the_spool_holds_it(tmp_path: Path) -> None:
    for next_seq, lost in ((7, 2), (8, 1)):  # the record 7 was written, or it was not
        d = tmp_path / str(next_seq)
        d.mkdir()
        ledger = CrashLedger(d)
        assert ledger.open(0) is None
        ledger.counts[ANSWERED] += 3
        ledger.begin(6, 1)
        ledger.commit()  # record 6 written: handed 1
        ledger.begin(7, 1)  # killed while writing record 7
        loss = CrashLedger(d).open(next_seq)
        assert loss is not None and (loss.decisions, loss.reason) == (lost, "crashed")


def test_a_clean_shutdown_that_could_not_write_everything_reports_closed(tmp_path: Path) -> None:
    ledger = CrashLedger(tmp_path)
    ledger.open(0)
    ledger.counts[ANSWERED] += 5
    ledger.begin(0, 5)  # a gap record for all five, written
    ledger.commit()
    ledger.close()
    assert CrashLedger(tmp_path).open(1) is None  # all accounted for: nothing to report
    again = CrashLedger(tmp_path)
    again.open(1)
    again.counts[ANSWERED] += 2  # answered after the sink closed
    again.close()
    loss = CrashLedger(tmp_path).open(1)
    assert loss is not None and (loss.decisions, loss.reason) == (2, "closed")


def test_a_loss_is_reported_until_its_gap_record_is_written_and_never_after(
    tmp_path: Path,
) -> None:
    ledger = CrashLedger(tmp_path)
    ledger.open(0)
    ledger.counts[ANSWERED] += 4
    # Killed before its gap record was written: the next start reports it again.
    first = CrashLedger(tmp_path).open(0)
    second = CrashLedger(tmp_path)
    again = second.open(0)
    assert first is not None and again is not None and again.decisions == first.decisions == 4
    second.begin(0, again.decisions)
    second.commit()
    assert CrashLedger(tmp_path).open(1) is None


def test_a_surplus_from_a_retried_stage_does_not_hide_a_later_loss(tmp_path: Path) -> None:
    ledger = CrashLedger(tmp_path)
    ledger.open(0)
    ledger.counts[ANSWERED] += 1
    for seq in (0, 1):  # the same decision written twice (a stage retried)
        ledger.begin(seq, 1)
        ledger.commit()
    assert CrashLedger(tmp_path).open(2) is None
    after = CrashLedger(tmp_path)
    after.open(2)
    after.counts[ANSWERED] += 1  # answered, then killed
    loss = CrashLedger(tmp_path).open(2)
    assert loss is not None and loss.decisions == 1


def test_a_file_of_another_size_starts_a_fresh_account(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"\xff" * 100)
    ledger = CrashLedger(tmp_path)
    assert ledger.open(0) is None
    assert (tmp_path / FILE_NAME).stat().st_size == SIZE
