"""The grpc-go tools of loadtests/grpc_go_hop/ (a hop, a fixed-answer server, a generator),
built into .cache/ on first use."""

from __future__ import annotations

import subprocess
from pathlib import Path

GO_SOURCE = Path(__file__).resolve().parent / "grpc_go_hop"
GO_BINARY = GO_SOURCE.parent.parent / ".cache" / "grpc-go-hop" / "grpchop"


def build_go() -> bool:
    """Build the grpc-go hop into .cache/ (go's own cache makes a rebuild cheap)."""
    try:
        subprocess.run(
            ["go", "build", "-o", str(GO_BINARY), "."],
            cwd=GO_SOURCE,
            check=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"the grpc-go hop did not build ({exc}): left out")
        return False
    return True
