"""The sidecar's gRPC package turns grpcio's EventEngine rollouts off, and grpcio knows them.

The saving is measured by loadtests/grpc_hops.py; here, what makes it hold in a
real process: the variable is set before grpc is imported when the operator has
not set it, an operator's value stands, and the installed grpcio accepts every
name (a grpcio that dropped one would log "Unknown experiment" and fall back to
its dearer default: this test then says which name to take out).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sidecar.dataplane.grpc import NO_EVENT_ENGINE

_REPO = Path(__file__).resolve().parents[2]
# What `sidecar serve` does: the sidecar's modules first, then grpc, then a server and a channel.
_PROBE = """
import os, sys
import sidecar.dataplane.grpc.server
import grpc
server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(1))
server.add_insecure_port("127.0.0.1:0")
server.start()
grpc.insecure_channel("127.0.0.1:9").close()
server.stop(0)
print(repr(os.environ.get("GRPC_EXPERIMENTS")))
"""


def _probe(experiments: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    env["PYTHONPATH"] = str(_REPO)
    return subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
    )


def test_rollouts_are_turned_off_before_grpc_reads_them_and_grpcio_knows_every_name() -> None:
    done = _probe(None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(NO_EVENT_ENGINE)
    names = [n.lstrip("-") for n in NO_EVENT_ENGINE.split(",")]
    assert len(names) == 4
    unknown = [n for n in names if f"Unknown experiment: {n}" in done.stderr]
    assert not unknown, f"this grpcio no longer has {unknown}: {done.stderr}"


def test_an_operators_value_stands() -> None:
    done = _probe("")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr("")
    # And a name grpcio does not know is reported, so the check above can see one.
    bogus = _probe("-no_such_rollout_xyz")
    assert "Unknown experiment: no_such_rollout_xyz" in bogus.stderr
