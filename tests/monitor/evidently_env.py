"""Evidently in its own virtual environment, for checking our PSI against Evidently's.

Evidently 0.7 does not import under pandas 3 (the sidecar's), so it lives in
a venv of its own with the pandas 2 it needs (`tests.toolvenv`: built once per machine
from PyPI, a few minutes).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.toolvenv import BuildFailed, tool_venv

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
    try:
        venv = tool_venv("evidently", [f"evidently=={EVIDENTLY_VERSION}", "pandas<3"])
    except BuildFailed as exc:
        if "No matching distribution found for evidently" in exc.stderr:
            pytest.skip(f"the package registry has no evidently=={EVIDENTLY_VERSION}")
        raise
    return venv / "bin" / "python"


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
