"""`sidecar serve` as a user runs it: a start it refuses ends with a message, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sidecar.sinks.spool_format import FORMAT_VERSION, segment_header

# The console script installed beside this interpreter: the command a user types.
SIDECAR = str(Path(sys.executable).with_name("sidecar"))


def test_a_spool_of_a_newer_format_stops_the_start_with_a_message(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    seg = spool / f"{0:020d}.seg"
    head = bytearray(segment_header(0))
    head[8:10] = (FORMAT_VERSION + 1).to_bytes(2, "little")  # what a later release would write
    seg.write_bytes(bytes(head))
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[proxy]\nport = 0\n[control]\nport = 0\n[sink]\nkind = "kafka"\n'
        f'[spool]\ndirectory = "{spool}"\n[review]\ndb_path = "{tmp_path / "r.db"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    proc = subprocess.run(
        [SIDECAR, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        f"sidecar: cannot start: spool file {seg} has format version {FORMAT_VERSION + 1}"
        in proc.stderr
    )
    assert seg.read_bytes() == bytes(head)  # refused, not repaired
