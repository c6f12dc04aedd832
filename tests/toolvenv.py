"""Virtual environments for the real tools the tests run beside the sidecar (MLServer,
PyTriton, Evidently), each with dependencies that clash with the sidecar's.

Each is built once per machine from PyPI, under the user's cache folder
(`$EXPLAINING_SIDECAR_TEST_CACHE`, else `$XDG_CACHE_HOME/explaining-sidecar`, else
`~/.cache/explaining-sidecar`), in a folder named for what it holds (tool, pinned
version, Python), as pre-commit and tox keep theirs: a fresh clone reuses it, and a
change of pin builds a new one beside it. Building takes one to five minutes; a lock
makes two test sessions that need one at once build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def cache_root() -> Path:
    explicit = os.environ.get("EXPLAINING_SIDECAR_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "explaining-sidecar"


class BuildFailed(RuntimeError):
    def __init__(self, name: str, stderr: str) -> None:
        super().__init__(f"building the {name} venv failed: {stderr[-2000:]}")
        self.stderr = stderr


def tool_venv(name: str, packages: Sequence[str], python: Path | None = None) -> Path:
    """The venv holding `packages` (pinned specs) for `python` (default: this interpreter's
    base), built when missing; its folder. Raises BuildFailed with pip's error output."""
    base = python or Path(getattr(sys, "_base_executable", sys.executable))
    version = subprocess.run(
        [str(base), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    key = hashlib.sha256("\n".join([str(base), *packages]).encode()).hexdigest()[:10]
    venv = cache_root() / f"{name}-py{version}-{key}"
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():  # another session built it while this one waited
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build that was interrupted
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *packages]
        proc = subprocess.run(pip, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise BuildFailed(name, proc.stderr)
        stamp.write_text("\n".join(packages) + "\n")
    return venv
