from __future__ import annotations

import pytest

from sidecar.decisions import Decision

# Shared helpers live beside the top-level tests (eventlib, kafka_broker).
from tests.eventlib import make_decision


@pytest.fixture
def decision() -> Decision:
    return make_decision()
