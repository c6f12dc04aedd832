"""The queue's counts when another process writes the review database (the data plane enqueues,
the control process counts): `PRAGMA data_version` says whether to count again."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.metrics import Registry
from sidecar.review import store as store_module
from sidecar.review.store import COUNTS_MAX_AGE_S, SqliteReviewStore
from sidecar.sinks.null import NullSink
from tests.review.review_helpers import make_decision


def _store(db: Path) -> SqliteReviewStore:
    registry = Registry()
    return SqliteReviewStore(db, sink=NullSink(registry), registry=registry)


def test_counts_follow_another_connections_writes_and_are_kept_while_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: now[0])
    counting, writing = _store(tmp_path / "review.db"), _store(tmp_path / "review.db")
    queries: list[str] = []
    counting._conn.set_trace_callback(queries.append)
    try:
        assert counting.counts() == {}
        writing.enqueue(make_decision("r1"))
        # Another connection wrote: within the max age the old counts may still be served ...
        now[0] += COUNTS_MAX_AGE_S / 2
        assert counting.counts() == {}
        # ... and past it they are counted again.
        now[0] += COUNTS_MAX_AGE_S
        assert counting.counts() == {"pending": 1}
        counted = sum("GROUP BY" in q for q in queries)
        # Nothing written since: kept however old, without reading the table again.
        now[0] += 100 * COUNTS_MAX_AGE_S
        assert counting.counts() == {"pending": 1}
        assert sum("GROUP BY" in q for q in queries) == counted
        # This store's own write shows at once.
        counting.claim("r1/0", "alice")
        assert counting.counts() == {"claimed": 1}
    finally:
        counting.close()
        writing.close()
