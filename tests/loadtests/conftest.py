from __future__ import annotations

import sys
from pathlib import Path

# loadtests/ lives at the repository root and is not installed with the package.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
