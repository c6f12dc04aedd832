"""`sidecar demo` as a user runs it: the printed lines work."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson


def test_demo_prints_working_urls_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "--log-level", "warning", "demo",
         "--port", "0", "--control-port", "0", "--state", str(tmp_path), "--requests", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while "try" not in lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            key, sep, value = line.rstrip("\n").partition(": ")
            if sep and key in ("proxy", "console", "token", "decision", "try"):
                lines[key] = value
        assert set(lines) == {"proxy", "console", "token", "decision", "try"}, lines

        auth = {"Authorization": f"Bearer {lines['token']}"}
        with urllib.request.urlopen(urllib.request.Request(lines["decision"], headers=auth)) as r:
            looked_up = orjson.loads(r.read())
        assert looked_up["decision"]["model_name"] == "credit"
        assert looked_up["explanation"]["additivity_error"] < 1e-6
        with urllib.request.urlopen(lines["console"]) as r:
            assert b"<html" in r.read().lower()

        # The printed curl command, as a shell would split it, sent with urllib.
        argv = shlex.split(lines["try"])
        body = argv[argv.index("-d") + 1].encode()
        headers = dict(
            h.split(": ", 1) for i, h in enumerate(argv) if i > 0 and argv[i - 1] == "-H"
        )
        req = urllib.request.Request(argv[-1], data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req) as r:
            assert r.status == 200
            assert r.headers["x-decision-id"]
            assert orjson.loads(r.read())["model_name"] == "credit"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0
    assert (tmp_path / "events" / "sidecar.decisions").is_dir()
