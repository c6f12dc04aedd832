"""The control plane runs in a process of its own, niced, never on the data plane's loop or
interpreter; it is started again when it dies, and stops when the data plane dies."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from sidecar import restarts
from sidecar.config import load_settings
from sidecar.control import forkserver
from sidecar.control.supervisor import ControlProcessError
from sidecar.priority import is_idle
from sidecar.service import ServiceThread
from tests.servers import RecordingUpstream, running_sidecar, wait_until

V2 = b'{"id":"req-7","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}'
V2_OUT = (
    b'{"outputs":[{"name":"probabilities","shape":[2,2],"datatype":"FP32",'
    b'"data":[0.45,0.55,0.9,0.1]}]}'
)
TOKEN = "reviewer-token-for-the-process-test"


def _get(url: str, timeout: float, token: str | None = None) -> int:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()
        return int(resp.status)


def _json(url: str, token: str, data: dict[str, object] | None = None) -> dict[str, object]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method="GET" if data is None else "POST")
    req.add_header("authorization", f"Bearer {token}")
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        found: dict[str, object] = json.loads(resp.read())
        return found


def _answers(url: str) -> bool:
    try:
        return _get(url, timeout=2) == 200
    except (OSError, urllib.error.URLError):
        return False


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited; its new parent has not reaped it yet


def test_control_plane_answers_while_the_data_plane_loop_is_blocked(
    upstream: RecordingUpstream,
) -> None:
    with running_sidecar(upstream.url) as svc:
        loop = svc._loop
        assert loop is not None
        blocked, release = threading.Event(), threading.Event()

        def block() -> None:
            blocked.set()
            release.wait(30)  # the data plane's loop does nothing else until released

        loop.call_soon_threadsafe(block)
        assert blocked.wait(5)
        try:
            # On the data plane's loop these would wait until the release, and time out.
            assert _get(svc.control_url + "/healthz", timeout=1.5) == 200
            assert _get(svc.control_url + "/metrics", timeout=1.5) == 200
        finally:
            release.set()


def test_the_control_plane_is_its_own_niced_process(upstream: RecordingUpstream) -> None:
    with running_sidecar(upstream.url, control={"nice": 7, "gil_switch_interval_ms": 0.25}) as svc:
        assert svc.control is not None
        pid = svc.control.pid
        assert pid is not None and pid != os.getpid()
        # A child of this process's fork server (itself a child of this process), and every
        # one of its threads (uvicorn's, the bridge reader, the executor's) runs at the
        # configured niceness.
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == forkserver.server_pid()
        assert int(stat[1]) in _children(os.getpid())
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        assert len(tids) > 1
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in tids} == {7}
        assert all(is_idle(tid) for tid in tids)
        # In this process's session: one scheduling group under Linux's autogroup, so its
        # SCHED_IDLE yields to the data plane (`sidecar.priority`). In a process group of its
        # own (as the fork server is), so a terminal's Ctrl-C reaches the service, not it.
        assert os.getsid(pid) == os.getsid(0)
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert os.getpgid(int(stat[1])) == int(stat[1])
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text() == Path("/proc/self/autogroup").read_text()
        # This process keeps its own priority; the switch interval is still set for its threads.
        assert os.getpriority(os.PRIO_PROCESS, 0) != 7
        assert sys.getswitchinterval() == 0.00025
        assert _get(svc.control_url + "/healthz", timeout=5) == 200


def test_sched_idle_off_leaves_the_control_process_niced_only(
    upstream: RecordingUpstream,
) -> None:
    with running_sidecar(upstream.url, control={"nice": 5, "sched_idle": False}) as svc:
        assert svc.control is not None and svc.control.pid is not None
        tids = [int(t) for t in os.listdir(f"/proc/{svc.control.pid}/task")]
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in tids} == {5}
        assert not any(is_idle(tid) for tid in tids)


def test_a_killed_control_process_is_started_again_on_the_same_port(
    upstream: RecordingUpstream,
) -> None:
    with running_sidecar(upstream.url) as svc:
        assert svc.control is not None
        first = svc.control.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: svc.control is not None and svc.control.pid != first, what="restart")
        wait_until(lambda: _answers(svc.control_url + "/metrics"), 60, what="metrics again")
        assert svc.control.restarts == 1
        assert _gone(first)


def test_a_control_process_that_keeps_dying_stops_the_service_with_an_error(
    upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(restarts, "MAX_RESTARTS", 1)
    settings = load_settings(
        environ={},
        overrides={
            "proxy": {"port": 0, "upstream": upstream.url},
            "control": {"port": 0},
            "sink": {"directory": str(tmp_path / "events")},
            "review": {"db_path": str(tmp_path / "review.db")},
        },
    )
    runner = ServiceThread(settings)
    with runner as svc:
        control = svc.control
        assert control is not None
        first = control.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # Started again once (and serving) ...
        wait_until(lambda: control.pid != first and control.serving, 60, what="serving again")
        assert _answers(svc.control_url + "/healthz")
        second = control.pid
        assert second is not None
        # ... and not twice within the window: the service stops, saying why.
        os.kill(second, signal.SIGKILL)
        wait_until(runner._done.is_set, what="the service stopped")
        assert control.pid == second
    assert isinstance(runner._error, ControlProcessError)
    assert "1 times" in str(runner._error)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        # A child can end between its parent's listing and this one (a killed control
        # process, a fork server's short-lived helper): it has no children then.
        return found
    for tid in tids:
        # A thread can end between the listing and the read (the service's executor threads).
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return found


def _serve(upstream_url: str) -> subprocess.Popen[str]:
    """`sidecar serve` in a process of its own, on free ports, its state in a fresh folder."""
    state = Path(tempfile.mkdtemp(prefix="sidecar-test-"))
    config = state / "sidecar.toml"
    config.write_text(
        f'[proxy]\nport = 0\nupstream = "{upstream_url}"\n'
        f"[control]\nport = 0\n"
        f'[sink]\ndirectory = "{state / "events"}"\n'
        f'[review]\ndb_path = "{state / "review.db"}"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def test_sidecar_serve_exits_naming_a_control_plane_that_keeps_dying(
    upstream: RecordingUpstream,
) -> None:
    serve = _serve(upstream.url)
    try:
        assert serve.stdout is not None and serve.stderr is not None
        err: list[str] = []
        stderr = serve.stderr
        reader = threading.Thread(target=lambda: err.extend(stderr), daemon=True)
        reader.start()
        killed: set[int] = set()

        def acknowledged() -> set[int]:
            # The supervisor's own word that a control process serves: a /healthz answer
            # comes a moment before it, and a kill in that moment is a failed *start*
            # (the first one is not retried), not the restart this test counts.
            return {int(line.split()[-2]) for line in list(err) if line.endswith(" serving\n")}

        while serve.poll() is None and len(killed) <= restarts.MAX_RESTARTS:
            wait_until(
                lambda: serve.poll() is not None or bool(acknowledged() - killed),
                60,
                what="a control process serving",
            )
            for child in acknowledged() - killed:
                os.kill(child, signal.SIGKILL)
                killed.add(child)
        assert serve.wait(60) == 1
        reader.join(10)
        text = "".join(err)
        assert "sidecar: control plane: the control process exited with -9" in text, text
        assert f"{restarts.MAX_RESTARTS} times" in text, text
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_the_control_process_stops_when_the_data_plane_is_killed(
    upstream: RecordingUpstream,
) -> None:
    serve = _serve(upstream.url)
    try:
        assert serve.stdout is not None
        lines = [serve.stdout.readline(), serve.stdout.readline()]
        control_url = lines[1].split()[1]
        wait_until(lambda: _answers(control_url + "/healthz"), 60, what="control plane")
        (server,) = _children(serve.pid)
        (child,) = _children(server)
        serve.kill()  # no chance to stop anything: the child must notice by itself
        serve.wait()
        wait_until(lambda: _gone(child), what="the control process to exit")
        wait_until(lambda: _gone(server), what="the fork server to exit")
        host, port = control_url.removeprefix("http://").split(":")
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port))):
            pass
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_lookups_review_and_metrics_cross_the_boundary(upstream: RecordingUpstream) -> None:
    @upstream.route("/v2/models/m/infer")
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=V2_OUT, content_type="application/json")

    tokens = {TOKEN: {"name": "ada", "role": "reviewer"}}
    with running_sidecar(
        upstream.url, auth={"tokens": tokens}, review={"confidence_below": 0.6}
    ) as svc:
        req = urllib.request.Request(svc.proxy_url + "/v2/models/m/infer", data=V2, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            call = r.headers["x-decision-id"]
        base = svc.control_url
        # By id: the decision store is in the data plane's process.
        wait_until(lambda: svc.store.get(f"{call}/1") is not None, what="recorded")
        found = _json(f"{base}/decisions/{call}/1", TOKEN)
        assert found["decision"]["decision_id"] == f"{call}/1"  # type: ignore[index]
        page = _json(f"{base}/decisions?request_id=req-7", TOKEN)
        assert [d["decision_id"] for d in page["decisions"]] == [f"{call}/0", f"{call}/1"]  # type: ignore[attr-defined]
        # The unsure row went to review (written by the data plane, read and moved by the
        # control process, in the one SQLite file).
        wait_until(lambda: svc.review_store.get(f"{call}/0") is not None, what="queued")
        _json(f"{base}/review/items/{call}/0/claim", TOKEN, {})
        decided = _json(
            f"{base}/review/items/{call}/0/decision", TOKEN, {"action": "approve", "reason": "ok"}
        )
        assert decided["status"] == "decided"
        item = svc.review_store.get(f"{call}/0")
        assert item is not None and item.status == "decided" and item.decided_by == "ada"
        # Metrics of both processes on one page: the data plane's request counter, the
        # control process's transitions, the queue's counts.
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'sidecar_review_transitions_total{action="approved"} 1.0' in text
        assert 'sidecar_review_items{status="decided"} 1.0' in text
        assert "sidecar_review_enqueued_total 1.0" in text
        assert "sidecar_decisions_retained 2.0" in text
        # Its review events went into the data plane's sink, after the one it queued with.
        events = svc.settings.sink.directory
        wait_until(
            lambda: b'"decided"' in b"".join(p.read_bytes() for p in events.rglob("*.jsonl")),
            what="the decided review event",
        )
        with urllib.request.urlopen(base + "/readyz", timeout=10) as r:
            ready = json.loads(r.read())
        assert ready["checks"]["upstream"] is True and ready["status"] == "ready"


def test_a_forked_control_process_starts_in_the_data_planes_directory_of_the_moment(
    upstream: RecordingUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fork server is started once, from wherever this process then was; a control
    # process forked later must still work where an exec'd one would have: relative paths
    # in the settings (the review store's here) mean the same in both processes.
    with running_sidecar(upstream.url):
        pass
    server = forkserver.server_pid()
    assert server is not None and os.readlink(f"/proc/{server}/cwd") != str(tmp_path)
    monkeypatch.chdir(tmp_path)
    with running_sidecar(upstream.url, review={"db_path": "here/review.db"}) as svc:
        assert forkserver.server_pid() == server  # forked, not a fresh interpreter
        assert svc.control is not None and svc.control.pid is not None
        assert os.readlink(f"/proc/{svc.control.pid}/cwd") == str(tmp_path)
        assert _get(svc.control_url + "/readyz", timeout=5) == 200
    assert (tmp_path / "here" / "review.db").exists()


def test_a_killed_fork_server_leaves_its_control_process_serving_and_watched(
    upstream: RecordingUpstream,
) -> None:
    with running_sidecar(upstream.url) as svc:
        control = svc.control
        assert control is not None
        server, first = forkserver.server_pid(), control.pid
        assert server is not None and first is not None
        os.kill(server, signal.SIGKILL)
        wait_until(lambda: _gone(server), what="the fork server to exit")
        # The control process does not depend on it ...
        assert _answers(svc.control_url + "/healthz")
        assert control.pid == first and control.restarts == 0
        # ... and its death is still seen: it is started again, from a new fork server.
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: control.pid != first and control.serving, 60, what="serving again")
        assert forkserver.server_pid() not in (None, server)
        assert _answers(svc.control_url + "/healthz")
        assert control.restarts == 1
        second = control.pid
        assert second is not None
    wait_until(lambda: _gone(second), what="the control process to stop with the service")
