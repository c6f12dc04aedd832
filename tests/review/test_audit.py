"""The audit chain catches every kind of tampering; `sidecar audit verify` says where."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.procs import has_open
from sidecar.cli import main
from sidecar.commands.audit import LOCAL_RECORDS_PER_S, NICE
from sidecar.priority import is_idle
from sidecar.review import audit
from tests.review.review_helpers import ReviewEnv, make_decision
from tests.servers import wait_until


def fill(env: ReviewEnv) -> tuple[int, str]:
    """Six items through every kind of step; returns the head an operator would keep."""
    s = env.store
    for i in range(6):
        s.enqueue(make_decision(f"a{i}"))
    s.claim("a0/0", "alice")
    s.decide("a0/0", "alice", "override", {"label": "repaid", "note": "ünïcode ok"}, "verified")
    s.claim("a1/0", "bob")
    s.release("a1/0", "bob")
    s.claim("a2/0", "bob")
    s.decide("a2/0", "bob", "approve", None, "agree")
    return s.audit_head()


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def verify_cli(db: Path, *extra: str) -> Ran:
    """`sidecar audit verify`, in-process (the subprocess form is tested once, below)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["audit", "verify", "--db", str(db), *extra])
    return Ran(code, out.getvalue(), err.getvalue())


def tamper(db: Path, *sql: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        for stmt in sql:
            conn.execute(stmt)
    conn.close()


def test_an_untouched_chain_verifies(env: ReviewEnv) -> None:
    seq, head = fill(env)
    assert seq == 12
    result = env.store.verify(head)
    assert result.ok and result.count == 12 and result.head_hash == head
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "audit",
            "verify",
            "--db",
            str(env.db_path),
            "--head",
            head,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"ok: 12 records, head seq 12 hash {head}" in out.stdout


def _threads(pid: int) -> dict[int, tuple[int, bool]]:
    """Each thread of `pid`: its niceness and whether it runs under SCHED_IDLE."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, OSError):
            found[int(tid)] = (os.getpriority(os.PRIO_PROCESS, int(tid)), is_idle(int(tid)))
    return found


@pytest.mark.parametrize("normal", [False, True])
def test_the_verify_program_runs_whole_at_the_lowest_priority(env: ReviewEnv, normal: bool) -> None:
    """Its main thread too (its start-up), not only the check's thread; not with
    --normal-priority. Paced to 4 records a second, its 12 records take about 3 s: once it
    has the database open, the check is under way."""
    fill(env)
    command = [sys.executable, "-m", "sidecar.cli", "audit", "verify", "--db", str(env.db_path)]
    extra = ["--normal-priority"] if normal else []
    proc = subprocess.Popen(
        [*command, "--max-records-per-s", "4", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        wait_until(
            lambda: proc.poll() is not None or has_open(proc.pid, env.db_path.resolve()),
            60,
            what="the check to open the database",
        )
        look = _threads(proc.pid)
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if normal:
        assert look == {proc.pid: (ours, False)}  # the check runs on the main thread
    else:
        assert len(look) == 2, look  # the main thread, waiting, and the check's
        assert set(look.values()) == {(NICE, True)}


def test_the_chain_is_sha256_over_the_previous_hash_and_the_canonical_record(
    env: ReviewEnv,
) -> None:
    fill(env)
    records = env.store.audit_records(limit=100)
    prev = audit.GENESIS
    for r in records:
        body = audit.canonical(
            r.seq,
            r.time,
            r.item_id,
            r.decision_id,
            r.action,
            r.actor,
            audit.canonical_data(r.data),
        )
        assert r.prev_hash == prev
        assert r.hash == audit.chain_hash(prev, body)
        prev = r.hash


@pytest.mark.parametrize(
    "seq,time,text",
    [
        (1, 1764556800.123456, "plain"),
        (2**53 + 1, 0.1, 'quote " backslash \\ slash /'),
        (7, 1e16, "control \x00\x1f\x7f tab\t newline\n"),
        (8, 1e-07, "ünïcode 漢字 \u2028 \U0001f600 emoji"),
        (9, -0.0, ""),
        (10, 123, "an int time hashes as the float it is read back as"),
    ],
)
def test_the_canonical_record_is_the_json_the_docstring_names(
    seq: int, time: float, text: str
) -> None:
    # canonical() writes the head itself for speed: it must stay byte-equal to the JSON that
    # stored chains (here and at the hub) were hashed over, or every old chain fails.
    data = audit.canonical_data({"z": text, "a": [time, seq, None, True], "m": {"y": 1, "b": 2}})
    expected = json.dumps(
        [seq, float(time), text, text[::-1], "claim", text, json.loads(data)],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    assert audit.canonical(seq, time, text, text[::-1], "claim", text, data) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_time_is_refused_as_json_refuses_it(bad: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        audit.canonical(1, bad, "i", "d", "a", "x", "{}")


TAMPERING: dict[str, tuple[list[str], int, str]] = {
    "edited outcome": (
        ["UPDATE audit SET data = replace(data, 'repaid', 'default') WHERE seq = 8"],
        8,
        "edited",
    ),
    # Equal JSON in another form is still not the text that was hashed.
    "reformatted data": (
        ["UPDATE audit SET data = replace(data, ':', ': ') WHERE seq = 4"],
        4,
        "edited",
    ),
    "data as a blob": (["UPDATE audit SET data = CAST(data AS BLOB) WHERE seq = 3"], 3, "edited"),
    "edited actor": (["UPDATE audit SET actor = 'mallory' WHERE seq = 9"], 9, "edited"),
    "edited time": (["UPDATE audit SET time = time + 1 WHERE seq = 2"], 2, "edited"),
    "deleted": (["DELETE FROM audit WHERE seq = 5"], 6, "deleted"),
    "reordered": (
        [
            # Swap the contents of records 7 and 8, each keeping its seq.
            "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (7, 8)",
            "UPDATE audit SET time = (SELECT time FROM t WHERE seq = 8),"
            " item_id = (SELECT item_id FROM t WHERE seq = 8),"
            " decision_id = (SELECT decision_id FROM t WHERE seq = 8),"
            " action = (SELECT action FROM t WHERE seq = 8), actor = (SELECT actor FROM t WHERE seq = 8),"
            " data = (SELECT data FROM t WHERE seq = 8), prev_hash = (SELECT prev_hash FROM t WHERE seq = 8),"
            " hash = (SELECT hash FROM t WHERE seq = 8) WHERE seq = 7",
            "UPDATE audit SET time = (SELECT time FROM t WHERE seq = 7),"
            " item_id = (SELECT item_id FROM t WHERE seq = 7),"
            " decision_id = (SELECT decision_id FROM t WHERE seq = 7),"
            " action = (SELECT action FROM t WHERE seq = 7), actor = (SELECT actor FROM t WHERE seq = 7),"
            " data = (SELECT data FROM t WHERE seq = 7), prev_hash = (SELECT prev_hash FROM t WHERE seq = 7),"
            " hash = (SELECT hash FROM t WHERE seq = 7) WHERE seq = 8",
        ],
        7,
        "previous-hash",
    ),
    "renumbered": (
        [
            "UPDATE audit SET seq = seq + 100 WHERE seq = 12",
            "UPDATE audit SET seq = 12 WHERE seq = 112",
        ],
        -1,
        "",
    ),
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampering_is_caught_at_the_first_bad_record(env: ReviewEnv, kind: str) -> None:
    _, head = fill(env)
    env.store.close()
    sql, bad_seq, word = TAMPERING[kind]
    tamper(env.db_path, *sql)
    out = verify_cli(env.db_path)
    if bad_seq < 0:
        # Moving a record away and back leaves it byte-identical: nothing was changed.
        assert out.returncode == 0, out.stderr
        return
    assert out.returncode == 1, out.stdout
    assert f"record seq={bad_seq}" in out.stderr and word in out.stderr
    conn = sqlite3.connect(env.db_path)
    result = audit.verify(conn, head)
    conn.close()
    assert not result.ok and result.bad_seq == bad_seq


@pytest.mark.parametrize("drop", [1, 3])
def test_truncation_is_caught_against_a_kept_head(env: ReviewEnv, drop: int) -> None:
    _, head = fill(env)
    env.store.close()
    tamper(env.db_path, f"DELETE FROM audit WHERE seq > {12 - drop}")
    # Without the head, a truncated chain is internally consistent ...
    assert verify_cli(env.db_path).returncode == 0
    # ... the head the operator kept is what reveals it.
    out = verify_cli(env.db_path, "--head", head)
    assert out.returncode == 1
    assert "truncated" in out.stderr and head in out.stderr
    assert f"{12 - drop} records" in out.stderr


def test_a_head_from_earlier_still_verifies_a_longer_chain(env: ReviewEnv) -> None:
    _, early = fill(env)
    env.store.enqueue(make_decision("later"))
    assert env.store.verify(early).ok
    assert verify_cli(env.db_path, "--head", early).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--head", "xyz"], "--head must be a 64-digit hex"),
        (["--db", "/nonexistent/review.db"], "no review database at /nonexistent/review.db"),
    ],
)
def test_bad_arguments_are_named(env: ReviewEnv, args: list[str], message: str) -> None:
    out = verify_cli(env.db_path, *args)
    assert out.returncode == 2 and message in out.stderr


def test_verify_json_output(env: ReviewEnv) -> None:
    import json

    _, head = fill(env)
    out = verify_cli(env.db_path, "--json")
    assert json.loads(out.stdout) == {
        "ok": True,
        "count": 12,
        "head_seq": 12,
        "head_hash": head,
        "error": None,
        "bad_seq": None,
    }


def test_verify_runs_at_the_lowest_priority_unless_told_otherwise(
    env: ReviewEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(env)
    seen: list[int] = []
    idle: list[bool] = []
    real = audit.verify

    def recording(
        conn: sqlite3.Connection, head: str | None = None, per_s: float = 0
    ) -> audit.VerifyResult:
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))  # the calling thread's niceness
        idle.append(is_idle(threading.get_native_id()))
        return real(conn, head, per_s)

    monkeypatch.setattr(audit, "verify", recording)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert ours < NICE
    assert verify_cli(env.db_path).returncode == 0
    assert verify_cli(env.db_path, "--normal-priority").returncode == 0
    assert seen == [NICE, ours]
    assert idle == [True, False]
    # Only the check's own thread was lowered: the caller keeps its priority.
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours


def test_the_local_check_is_paced_by_default_and_as_told(
    env: ReviewEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(env)
    paces: list[float] = []
    real = audit.verify

    def recording(
        conn: sqlite3.Connection, head: str | None = None, per_s: float = 0
    ) -> audit.VerifyResult:
        paces.append(per_s)
        return real(conn, head, per_s)

    monkeypatch.setattr(audit, "verify", recording)
    assert verify_cli(env.db_path).returncode == 0
    assert verify_cli(env.db_path, "--max-records-per-s", "0").returncode == 0
    assert verify_cli(env.db_path, "--max-records-per-s", "1e6").returncode == 0
    assert paces == [LOCAL_RECORDS_PER_S, 0, 1e6]


@pytest.mark.parametrize("rate", ["-1", "nan", "inf", "fast"])
def test_a_bad_pace_is_refused_naming_the_option(env: ReviewEnv, rate: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        verify_cli(env.db_path, "--max-records-per-s", rate)
    assert exit_.value.code == 2


def test_a_paced_check_finds_tampering_as_an_unpaced_one(env: ReviewEnv) -> None:
    fill(env)
    tamper(env.db_path, "UPDATE audit SET actor = 'mallory' WHERE seq = 3")
    fast = verify_cli(env.db_path, "--max-records-per-s", "0")
    slow = verify_cli(env.db_path, "--max-records-per-s", "50")
    assert fast.returncode == slow.returncode == 1
    assert fast.stderr == slow.stderr and "seq=3" in slow.stderr
