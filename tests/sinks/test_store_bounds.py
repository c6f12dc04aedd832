"""The lookup store and the feature-name cache are bounded in bytes, whatever the row width."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from sidecar.config import ConfigError, load_settings
from sidecar.control.store import DecisionStore
from sidecar.dataplane.protocols import base
from sidecar.metrics import Registry
from tests.eventlib import make_decision
from tests.proxy.test_inference import _post
from tests.servers import RecordingUpstream, running_sidecar

MiB = 1 << 20


def _wide(i: int, width: int, **kw: Any) -> list[Any]:
    names = [f"feature_{j}" for j in range(width)]
    return [
        make_decision(i, call_id=f"call{i:06d}", features=[0.5] * width, feature_names=names, **kw)
    ]


def _held(fill: Callable[[], DecisionStore]) -> tuple[DecisionStore, int]:
    """The store `fill` builds, and the memory it holds (tracemalloc, temporaries freed)."""
    gc.collect()
    tracemalloc.start()
    try:
        base_mem = tracemalloc.get_traced_memory()[0]
        store = fill()
        gc.collect()
        return store, tracemalloc.get_traced_memory()[0] - base_mem
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("width", "calls", "request_id"),
    [
        (4, 20_000, None),  # narrow rows: the per-entry overheads dominate
        (4, 20_000, "distinct"),  # plus a request-id index entry per call
        (20_000, 60, "same"),  # very wide rows, one client id reused
    ],
)
def test_the_store_holds_no_more_memory_than_its_byte_bound(
    width: int, calls: int, request_id: str | None
) -> None:
    bound = 4 * MiB

    def fill() -> DecisionStore:
        store = DecisionStore(10**9, Registry(), bound)
        for i in range(calls):
            rid = None if request_id is None else request_id if request_id == "same" else f"r{i}"
            store.add(_wide(i, width, request_id=rid))
        return store

    store, held = _held(fill)
    assert store.nbytes <= bound
    # What the store counts is what it holds, within the overheads' rounding.
    assert held <= store.nbytes * 1.05, (held, store.nbytes)
    # The newest are kept, the oldest forgotten.
    assert store.get(f"call{calls - 1:06d}/0") is not None
    assert store.get("call000000/0") is None


def test_wide_rows_cannot_grow_the_store_past_the_bound() -> None:
    registry = Registry()
    store = DecisionStore(100_000, registry, 2 * MiB)
    # Each decision of 100,000 features packs to about 1.9 MB with its names.
    for i in range(6):
        store.add(_wide(i, 100_000))
        assert store.nbytes <= 2 * MiB
    assert len(store) == 1
    assert store.get("call000005") is not None
    forgotten = registry.counter("sidecar_decisions_forgotten_total", "").value
    assert forgotten == 5
    # One decision larger than the whole bound is not kept at all.
    store.add(_wide(9, 300_000))
    assert store.nbytes <= 2 * MiB and len(store) == 0


def test_explanations_count_and_forgotten_calls_leave_the_index() -> None:
    store = DecisionStore(100_000, Registry(), 1 * MiB)
    first = _wide(0, 10, request_id="client-1")[0]
    store.add([first])
    store.set_explanation(first, {"contributions": [0.1] * 1000})
    with_explanation = store.nbytes
    assert with_explanation > 1000 * 4
    assert store.by_request("client-1")[0] == [first]
    # An explanation too large for the bound pushes its own call out, index entry too.
    store.set_explanation(first, {"contributions": [0.123456789] * 200_000})
    assert store.get(first.decision_id) is None
    assert store.by_request("client-1") == ([], False)
    assert store.nbytes == 0


def test_by_request_pages_are_bounded() -> None:
    store = DecisionStore(100_000, Registry(), 64 * MiB)
    for i in range(250):
        store.add(_wide(i, 2, request_id="constant"))
    page, more = store.by_request("constant", limit=1000)
    assert len(page) == 100 and more
    page2, more2 = store.by_request("constant", after=page[-1].decision_id)
    assert page2[0].call_id == "call000100" and more2
    last, more3 = store.by_request("constant", after="call000199/0")
    assert [d.call_id for d in last] == [f"call{i:06d}" for i in range(200, 250)]
    assert not more3


def test_default_feature_names_are_cached_within_their_byte_bound() -> None:
    before = base.names_cache_bytes()
    wide = base.names_for(300_000, [])
    assert wide[-1] == "f299999" and len(wide) == 300_000
    # Far past the bound: built for the call, never cached.
    assert base.names_cache_bytes() == before
    assert base.names_for(300_000, []) is not wide
    for width in range(1, 2_000):
        assert len(base.names_for(width, [])) == width
    assert base.names_cache_bytes() <= base.NAMES_CACHE_BYTES
    # Widths that were cached are shared between calls.
    assert base.names_for(3, []) is base.names_for(3, [])


def test_wide_calls_through_the_sidecar_stay_within_retention_bytes(
    upstream: RecordingUpstream,
) -> None:
    width = 50_000
    answer = orjson.dumps(
        {"outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [1]}]}
    )

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    upstream.routes["/v2/models/m/infer"] = handler
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP64", "data": [0.25] * width}]}
    )
    with running_sidecar(upstream.url, decisions={"retention_bytes": 2 * MiB}) as svc:
        ids = [_post(svc, "/v2/models/m/infer", body).getheader("x-decision-id") for _ in range(8)]
        assert svc.pipeline.drain(5)
        assert svc.store.nbytes <= 2 * MiB
        assert svc.store.get(ids[-1]) is not None
        assert svc.store.get(ids[0]) is None
        metrics = svc.registry.render()
    assert "sidecar_decisions_retained_bytes" in metrics


def test_retention_bytes_below_a_mebibyte_fails_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"decisions\.retention_bytes"):
        load_settings(environ={}, overrides={"decisions": {"retention_bytes": 1000}})
