from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import RecordingUpstream, recording_upstream


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as up:
        yield up
