"""The hostile-client load of bench_proxy --slowloris against a real sidecar (no timings)."""

from __future__ import annotations

from loadtests.slowloris import HostileLoad
from tests.servers import recording_upstream, running_sidecar, wait_until


def test_hostile_load_holds_its_connections_and_reopens_those_the_sidecar_closes() -> None:
    with (
        recording_upstream() as up,
        running_sidecar(up.url, proxy={"header_timeout_s": 0.3, "body_timeout_s": 0.3}) as svc,
    ):
        load = HostileLoad(svc.proxy_url, svc.control_url, 5)
        load.start()
        try:
            wait_until(lambda: load.counts["refused_408"] >= 10, what="the 408 deadlines")
            wait_until(lambda: load.counts["healthz_ok"] >= 1, what="the control plane")
        finally:
            load.stop()
    counts = load.counts
    assert counts["slowloris_held"] == 5 and counts["stalled_held"] == 5
    assert counts["reopened"] >= counts["refused_408"] >= 10
    assert counts["open_failed"] == 0 and counts["healthz_failed"] == 0
    assert up.seen == []  # neither kind ever reached the upstream
