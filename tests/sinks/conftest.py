from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Shared helpers live beside the top-level tests (eventlib, kafka_broker).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventlib import make_decision

from sidecar.decisions import Decision


@pytest.fixture
def decision() -> Decision:
    return make_decision()
