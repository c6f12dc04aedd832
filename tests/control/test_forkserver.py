"""How a forked control process's end is told once its fork server is gone: from the pidfd,
with its real status when it has become this process's child (a container's pid 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from sidecar.control.forkserver import _readable, _reap


def test_an_orphan_that_became_this_process_child_is_reaped_with_its_status() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pidfd = os.pidfd_open(child.pid)
    try:
        assert not _readable(pidfd, 0.0)
        os.kill(child.pid, signal.SIGKILL)
        assert _readable(pidfd, 30.0)
        assert _reap(pidfd) == -signal.SIGKILL
        child.returncode = -signal.SIGKILL  # reaped above: Popen must not wait for it
    finally:
        os.close(pidfd)
        if child.returncode is None:  # a failed assertion above: leave no sleeper behind
            child.kill()
            child.wait()


def test_a_process_that_is_not_this_ones_child_ends_with_an_unknown_status() -> None:
    # The grandchild's parent (the shell) reaps it, or init does: never this process.
    shell = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    grandchild = int(shell.stdout)
    pidfd = os.pidfd_open(grandchild)
    try:
        os.kill(grandchild, signal.SIGKILL)
        assert _readable(pidfd, 30.0)
        assert _reap(pidfd) == -1
    finally:
        os.close(pidfd)
