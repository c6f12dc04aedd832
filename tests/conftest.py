from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ holds shared helpers (servers.py) imported by every test directory.
sys.path.insert(0, str(Path(__file__).parent))

from servers import RecordingUpstream, recording_upstream


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up
