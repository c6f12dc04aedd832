"""Evidently in its own virtual environment, for checking our PSI against Evidently's.

Evidently 0.7 does not import under pandas 3 (the sidecar's), so it lives in
`.cache/evidently-venv` with the pandas 2 it needs, built on first use from PyPI
(a few minutes; cached after), as tests/mlserver.py builds MLServer's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "evidently-venv"
EVIDENTLY_VERSION = "0.7.23"
# Evidently's own PSI (evidently.legacy.calculations.stattests.psi) over samples of bin
# indices taken as categories: the bins are ours, the arithmetic is Evidently's.
_SCRIPT = """
import json, sys
import pandas as pd
from evidently.legacy.calculations.stattests.psi import _psi
from evidently.legacy.core import ColumnType
pairs = json.load(sys.stdin)
out = [float(_psi(pd.Series(r), pd.Series(c), ColumnType.Categorical, 0.1)[0]) for r, c in pairs]
json.dump(out, sys.stdout)
"""


def ensure_venv() -> Path:
    """The venv's python; skips the test only where the registry has no Evidently."""
    python = VENV / "bin" / "python"
    stamp = VENV / f".installed-{EVIDENTLY_VERSION}"
    if python.exists() and stamp.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", f"evidently=={EVIDENTLY_VERSION}", "pandas<3"]
    proc = subprocess.run(pip, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if "No matching distribution found for evidently" in proc.stderr:
            pytest.skip(f"the package registry has no evidently=={EVIDENTLY_VERSION}")
        raise RuntimeError(f"installing Evidently failed: {proc.stderr[-2000:]}")
    stamp.write_text("")
    return python


def evidently_psi(pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    """Evidently's PSI of each (reference bin indices, current bin indices)."""
    proc = subprocess.run(
        [str(ensure_venv()), "-c", _SCRIPT],
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out: list[float] = json.loads(proc.stdout)
    return out
