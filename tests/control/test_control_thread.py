"""The control plane runs on its own thread and event loop, niced, never on the data plane's loop."""

from __future__ import annotations

import os
import sys
import threading
import urllib.request

from tests.servers import RecordingUpstream, running_sidecar


def _get(url: str, timeout: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        resp.read()
        return int(resp.status)


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


def test_control_plane_thread_is_niced_and_the_switch_interval_is_set(
    upstream: RecordingUpstream,
) -> None:
    with running_sidecar(upstream.url, control={"nice": 7, "gil_switch_interval_ms": 0.25}) as svc:
        control = [t for t in threading.enumerate() if t.name == "control-plane"]
        assert len(control) == 1 and control[0].native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, control[0].native_id) == 7
        assert sys.getswitchinterval() == 0.00025
        assert _get(svc.control_url + "/healthz", timeout=5) == 200
