"""`sidecar serve` with `proxy.workers = 2`: real processes on loopback, one control port.

One service for the module (a start is two data-plane processes, each loading
its own explainer, and a control process): traffic over many connections, then
lookups, metrics, the review chain, and last a worker killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from loadtests.procs import cpu_seconds, data_plane_cpu_seconds
from sidecar.decisions import worker_of
from sidecar.restarts import MAX_RESTARTS
from tests.kafka_broker import dead_bootstrap
from tests.servers import RecordingUpstream, recording_upstream, wait_until

TOKEN = "reviewer-token-for-the-workers-test"
ADMIN = "admin-token-for-the-workers-test"
# Row 0 is unsure (0.55 < review.confidence_below): every call queues one review item.
V2_OUT = (
    b'{"outputs":[{"name":"probabilities","shape":[2,2],"datatype":"FP32",'
    b'"data":[0.45,0.55,0.9,0.1]}]}'
)
_ROOT = Path(__file__).resolve().parents[2]


def _v2(request_id: str) -> bytes:
    return json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        }
    ).encode()


@dataclass
class Served:
    proc: subprocess.Popen[str]
    proxy: tuple[str, int]
    control: str
    state: Path


def _get(url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ready(control: str) -> bool:
    try:
        return _get(control + "/readyz")[0] == 200
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return found


def _workers(pid: int) -> list[int]:
    """The worker processes of a `sidecar serve` (its children running sidecar.workers)."""
    out = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            # Gone between the listing and the read (a killed worker exits meanwhile):
            # its cmdline file can still open and then fail to read.
            continue
        if b"sidecar.workers.process" in cmd:
            out.append(child)
    return out


def _serve(upstream_url: str, state: Path, workers: int = 2, extra_proxy: str = "") -> Served:
    config = state / "sidecar.toml"
    config.write_text(
        f'[proxy]\nport = 0\nupstream = "{upstream_url}"\nworkers = {workers}\n{extra_proxy}'
        "[control]\nport = 0\n"
        f'[sink]\ndirectory = "{state / "events"}"\n'
        f'[review]\ndb_path = "{state / "review.db"}"\nconfidence_below = 0.6\n'
        "[auth.tokens]\n"
        f'"{TOKEN}" = {{ name = "ada", role = "reviewer" }}\n'
        f'"{ADMIN}" = {{ name = "root", role = "admin" }}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        # A file, not a pipe: nobody drains a pipe while the tests run.
        stderr=(state / "stderr.log").open("w"),
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
        text=True,
        cwd=state,
        # Its own process group, as under a terminal: the tests send it a Ctrl-C.
        start_new_session=True,
    )
    assert proc.stdout is not None
    proxy_line, control_line = proc.stdout.readline(), proc.stdout.readline()
    assert proxy_line.startswith("proxy: "), proxy_line + (state / "stderr.log").read_text()
    host, port = proxy_line.split()[1].removeprefix("http://").split(":")
    served = Served(proc, (host, int(port)), control_line.split()[1], state)
    try:
        wait_until(lambda: _ready(served.control), 90, what="every worker ready")
    except BaseException:
        stop(served)  # a service that never got ready must not outlive the test
        raise
    return served


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:

        @up.route("/v2/models/m/infer")
        async def infer(request: web.Request) -> web.Response:
            return web.Response(body=V2_OUT, content_type="application/json")

        yield up


@pytest.fixture(scope="module")
def served(upstream: RecordingUpstream) -> Iterator[Served]:
    state = Path(tempfile.mkdtemp(prefix="sidecar-workers-test-"))
    s = _serve(upstream.url, state)
    try:
        yield s
    finally:
        stop(s)


def stop(s: Served) -> None:
    """SIGTERM, as a pod's stop sends; SIGKILL past 30 s."""
    s.proc.send_signal(signal.SIGTERM)
    try:
        s.proc.wait(30)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait()


def _call(proxy: tuple[str, int], request_id: str) -> str:
    """One inference call on a connection of its own; its call id."""
    conn = http.client.HTTPConnection(*proxy, timeout=15)
    try:
        conn.request(
            "POST",
            "/v2/models/m/infer",
            body=_v2(request_id),
            headers={"content-type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return str(resp.getheader("x-decision-id"))
    finally:
        conn.close()


def _metric(text: str, line_start: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(line_start):
            total += float(line.rsplit(" ", 1)[1])
    return total


CALLS = 120
SHARED_ID = "shared-request"


@pytest.fixture(scope="module")
def calls(served: Served) -> list[str]:
    """CALLS calls from 8 threads, each on a new connection: every fourth carries one
    request id shared by all, the others one of their own."""
    ids: list[str] = [""] * CALLS

    def run(k: int) -> None:
        for i in range(k, CALLS, 8):
            ids[i] = _call(served.proxy, SHARED_ID if i % 4 == 0 else f"own-{i}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(ids)
    return ids


def test_connections_reach_both_workers_and_ids_stay_unique(calls: list[str]) -> None:
    assert len(set(calls)) == CALLS
    by_worker = {k: sum(1 for c in calls if worker_of(c) == k) for k in (0, 1)}
    # 120 connections spread by the kernel's hash of their source ports: both get some.
    assert by_worker[0] > 0 and by_worker[1] > 0, by_worker
    assert by_worker[0] + by_worker[1] == CALLS


def test_every_decision_is_found_by_id_and_by_request_id(served: Served, calls: list[str]) -> None:
    base = served.control
    for call in calls:
        for row in (0, 1):

            def found(did: str = f"{call}/{row}") -> bool:
                status, body = _get(f"{base}/decisions/{did}")
                return status == 200 and json.loads(body)["decision"]["decision_id"] == did

            wait_until(found, 20, what=f"decision {call}/{row}")
    # Paged by request id: the shared one's calls came through both workers, merged in order.
    shared = sorted(c for i, c in enumerate(calls) if i % 4 == 0)
    want = [f"{c}/{row}" for c in shared for row in (0, 1)]
    got: list[str] = []
    after = None
    while True:
        url = f"{base}/decisions?request_id={SHARED_ID}&limit=7" + (
            f"&after={after}" if after else ""
        )
        status, body = _get(url)
        assert status == 200, body
        page = json.loads(body)
        got += [d["decision_id"] for d in page["decisions"]]
        after = page["next_after"]
        if after is None:
            break
    assert got == want
    assert {worker_of(c) for c in shared} == {0, 1}
    status, body = _get(f"{base}/decisions?request_id=own-5")
    assert [d["decision_id"] for d in json.loads(body)["decisions"]] == [
        f"{calls[5]}/0",
        f"{calls[5]}/1",
    ]


def test_metrics_sum_the_workers(served: Served, calls: list[str]) -> None:
    status, body = _get(served.control + "/metrics", ADMIN)
    assert status == 200
    text = body.decode()
    assert _metric(text, 'sidecar_requests_total{kind="inference"}') == CALLS
    # Each worker holds its own calls; the page shows the sum.
    wait_until(
        lambda: (
            _metric(
                _get(served.control + "/metrics", ADMIN)[1].decode(), "sidecar_decisions_retained "
            )
            == 2 * CALLS
        ),
        what="every decision retained",
    )
    assert "sidecar_thread_alive{" in text


def test_both_workers_queue_reviews_into_one_chain(served: Served, calls: list[str]) -> None:
    db = served.state / "review.db"

    def queued() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])

    wait_until(lambda: queued() == CALLS, 20, what="every unsure row queued")
    with sqlite3.connect(db) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM audit ORDER BY seq")]
        items = [r[0] for r in conn.execute("SELECT item_id FROM audit")]
    assert seqs == list(range(1, CALLS + 1))
    assert {worker_of(i) for i in items} == {0, 1}
    out = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "audit", "verify", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_each_worker_writes_its_own_files(served: Served, calls: list[str]) -> None:
    events = served.state / "events"
    wait_until(
        lambda: all(list((events / f"worker-{k}").rglob("*.jsonl")) for k in (0, 1)),
        what="both workers' event files",
    )
    assert sorted(p.name for p in events.iterdir()) == ["worker-0", "worker-1"]


def test_not_ready_while_one_worker_cannot_answer(served: Served) -> None:
    (worker,) = _workers(served.proc.pid)
    os.kill(worker, signal.SIGSTOP)
    try:
        status, body = _get(served.control + "/readyz")
        assert status == 503, body
        assert json.loads(body)["status"] == "not ready"
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: _ready(served.control), 30, what="ready again")


def test_the_harness_counts_every_workers_cpu_and_not_the_control_process(
    served: Served, calls: list[str]
) -> None:
    pid = served.proc.pid
    (worker,) = _workers(pid)
    main_alone = _cpu(pid)
    data_plane = data_plane_cpu_seconds(pid)
    assert data_plane >= main_alone + _cpu(worker) - 0.05  # read a moment apart
    assert data_plane > main_alone
    assert cpu_seconds(pid) > data_plane  # the control process (and its fork server)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_killed_worker_is_started_again_and_serves(served: Served, calls: list[str]) -> None:
    (first,) = _workers(served.proc.pid)
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: bool(_workers(served.proc.pid)) and _workers(served.proc.pid) != [first],
        60,
        what="a new worker 1",
    )
    wait_until(lambda: _ready(served.control), 60, what="ready again")
    assert served.proc.poll() is None
    # The port keeps serving; the new worker mints worker 1's ids and answers for them.
    later = [_call(served.proxy, "after-restart") for _ in range(60)]
    assert {worker_of(c) for c in later} == {0, 1}
    for c in later:
        wait_until(lambda c=c: _get(f"{served.control}/decisions/{c}/0")[0] == 200, 20, what=c)
    log = (served.state / "stderr.log").read_text()
    assert f"worker 1 (pid {first}) exited with -9; starting another" in log, log


def test_a_restarted_control_process_reaches_every_worker_again(
    served: Served, calls: list[str]
) -> None:
    workers = set(_workers(served.proc.pid))
    (server,) = set(_children(served.proc.pid)) - workers  # the fork server
    (control,) = _children(server)
    os.kill(control, signal.SIGKILL)
    wait_until(lambda: _children(server) not in ([], [control]), 60, what="a new control process")
    wait_until(lambda: _ready(served.control), 60, what="ready again")
    # Calls made now (worker 1 may have been replaced since `calls`, its store with it).
    fresh = [_call(served.proxy, "after-control-restart") for _ in range(40)]
    assert {worker_of(c) for c in fresh} == {0, 1}
    for c in fresh:
        wait_until(lambda c=c: _get(f"{served.control}/decisions/{c}/1")[0] == 200, 20, what=c)


def test_workers_and_the_control_process_share_the_services_session(served: Served) -> None:
    """One session, so one scheduling group under Linux's autogroup: the control process's
    SCHED_IDLE yields to every data plane (in a session of its own, it competed with them as
    an equal, `sidecar.priority`). Each in a process group of its own, off the terminal's."""
    pid = served.proc.pid
    workers = set(_workers(pid))
    (server,) = set(_children(pid)) - workers
    (control,) = _children(server)
    assert workers
    for child in (*workers, server, control):
        assert os.getsid(child) == os.getsid(pid)
        assert os.getpgid(child) == child != os.getpgid(pid)


def test_ctrl_c_stops_every_worker_without_starting_another(served: Served) -> None:
    workers = _workers(served.proc.pid)
    assert len(workers) == 1
    os.killpg(served.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the group
    assert served.proc.wait(30) == 0
    # Once, for the kill above; the stop started none.
    log = (served.state / "stderr.log").read_text()
    assert len(re.findall(r"worker \d+ \(pid \d+\) exited with .*; starting another", log)) == 1
    wait_until(lambda: all(_gone(w) for w in workers), what="the workers to exit")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(served.proxy, timeout=5).close()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_workers_stop_when_the_service_process_is_killed(upstream: RecordingUpstream) -> None:
    s = _serve(upstream.url, Path(tempfile.mkdtemp(prefix="sidecar-workers-test-")))
    workers = _workers(s.proc.pid)
    assert len(workers) == 1
    s.proc.kill()  # worker 0 and the supervisor at once: nothing is told
    s.proc.wait()
    wait_until(lambda: all(_gone(w) for w in workers), 30, what="the orphaned worker to exit")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(s.proxy, timeout=5).close()


def test_a_worker_that_keeps_dying_stops_the_service_naming_it(
    upstream: RecordingUpstream,
) -> None:
    s = _serve(upstream.url, Path(tempfile.mkdtemp(prefix="sidecar-workers-test-")))
    try:
        killed: set[int] = set()
        while s.proc.poll() is None and len(killed) <= MAX_RESTARTS:
            wait_until(
                lambda: s.proc.poll() is not None or bool(set(_workers(s.proc.pid)) - killed),
                60,
                what="a worker",
            )
            for w in set(_workers(s.proc.pid)) - killed:
                os.kill(w, signal.SIGKILL)
                killed.add(w)
        assert s.proc.wait(60) == 1
        err = (s.state / "stderr.log").read_text()
        assert (
            f"sidecar: workers: worker 1 exited with -9, {MAX_RESTARTS} times within 60 s" in err
        ), err
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_a_worker_that_cannot_start_stops_the_start_naming_it(
    upstream: RecordingUpstream, tmp_path: Path
) -> None:
    # Worker 1's spool folder is held (as by another sidecar): that worker cannot open it.
    held = tmp_path / "spool" / "worker-1"
    held.mkdir(parents=True)
    fd = os.open(held / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        config = tmp_path / "sidecar.toml"
        config.write_text(
            f'[proxy]\nport = 0\nupstream = "{upstream.url}"\nworkers = 2\n'
            "[control]\nport = 0\n"
            '[sink]\nkind = "kafka"\n'
            f'[kafka]\nbootstrap_servers = "{dead_bootstrap()}"\n'
            f'[spool]\ndirectory = "{tmp_path / "spool"}"\n'
            f'[review]\ndb_path = "{tmp_path / "review.db"}"\n'
        )
        out = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(_ROOT)},
            timeout=120,
        )
    finally:
        os.close(fd)
    assert out.returncode == 1, out.stderr
    assert "sidecar: workers: worker 1 exited with 1 at start" in out.stderr
    assert f"spool directory {held} is in use" in out.stderr  # the worker's own reason
