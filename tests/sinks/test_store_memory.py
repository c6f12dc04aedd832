"""The lookup store's memory per decision: what `decisions.retention` costs."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from sidecar.control.store import DecisionStore
from sidecar.metrics import Registry
from tests.eventlib import make_decision


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def test_a_retained_decision_costs_about_its_packed_size() -> None:
    # Filled from a thread of its own, as the pipeline does: a fresh malloc arena, so
    # the growth is the store's. Kept orjson buffers as they come cost ~4.1 KiB each.
    store = DecisionStore(100_000, Registry())
    n = 20_000
    names = [f"feature_{i}" for i in range(20)]
    batches = [
        [
            make_decision(i + k, features=[0.1234 * j for j in range(20)], feature_names=names)
            for k in range(12)
        ]
        for i in range(0, n, 12)
    ]
    grew: list[int] = []

    def fill() -> None:
        before = _rss_bytes()
        for batch in batches:
            store.add(batch)
        grew.append(_rss_bytes() - before)

    t = threading.Thread(target=fill)
    t.start()
    t.join()
    assert len(store) == len(batches) * 12
    per_decision = grew[0] / len(store)
    assert per_decision < 1500, f"{per_decision:.0f} bytes of memory per retained decision"
