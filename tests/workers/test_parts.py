"""The parts of `proxy.workers` one at a time: ids, the merged lookups, the summed metrics,
the sockets and the per-worker settings."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import socket
import threading
import uuid
from collections.abc import Iterator

import orjson
import pytest

from sidecar import decisions
from sidecar.config import ConfigError, load_settings
from sidecar.control.bridge import BridgeClient, BridgeError, BridgeServer
from sidecar.control.metrics_view import snapshot
from sidecar.control.store import DecisionStore
from sidecar.metrics import Registry
from sidecar.workers.fanout import FannedDecisions, fetch_metrics
from sidecar.workers.metrics import combine
from sidecar.workers.slot import bind_reuseport, for_worker
from tests.test_decision_fields import full_decision


@pytest.fixture
def minting(monkeypatch: pytest.MonkeyPatch) -> None:
    """set_worker rebinds module constants: put them back after the test."""
    monkeypatch.setattr(decisions, "_RANDOM", decisions._RANDOM)
    monkeypatch.setattr(decisions, "_VERSION_VARIANT", decisions._VERSION_VARIANT)


@pytest.mark.usefixtures("minting")
@pytest.mark.parametrize("index", [0, 1, 63, 255])
def test_a_workers_ids_are_uuid7s_that_name_it(index: int) -> None:
    decisions.set_worker(index)
    ids = [decisions.new_call_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for i in ids[:50]:
        u = uuid.UUID(i)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert decisions.worker_of(i) == index
        assert decisions.worker_of(f"{i}/3") == index
    # The other 66 random bits still vary.
    assert len({i[12:30] for i in ids}) == len(ids)


@pytest.mark.usefixtures("minting")
def test_a_worker_index_past_8_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="256"):
        decisions.set_worker(256)


def test_worker_of_a_foreign_id_is_none_of_them() -> None:
    assert decisions.worker_of("not-a-call-id") == -1
    assert decisions.worker_of("z" * 32) == -1


@pytest.mark.parametrize("value", [0, 65, -1])
def test_workers_out_of_range_name_the_key(value: int) -> None:
    with pytest.raises(ConfigError, match=re.escape("proxy.workers")):
        load_settings(environ={}, overrides={"proxy": {"workers": value}})


def test_grpc_with_workers_is_accepted() -> None:
    s = load_settings(
        environ={},
        overrides={
            "proxy": {
                "workers": 2,
                "grpc_listen": "127.0.0.1:0",
                "grpc_upstream": "http://127.0.0.1:9",
            }
        },
    )
    assert s.proxy.workers == 2 and s.proxy.grpc_listen == "127.0.0.1:0"


def test_each_worker_has_its_own_folders_and_share_of_the_store() -> None:
    s = load_settings(environ={}, overrides={"proxy": {"workers": 4}})
    w = for_worker(s, 2)
    assert w.spool.directory == s.spool.directory / "worker-2"
    assert w.sink.directory == s.sink.directory / "worker-2"
    assert w.decisions.retention == s.decisions.retention // 4
    assert w.decisions.retention_bytes == s.decisions.retention_bytes // 4
    one = load_settings(environ={}, overrides={"proxy": {"workers": 1}})
    assert for_worker(one, 0) is one


def test_reuseport_sockets_share_the_port_that_port_0_picked() -> None:
    socks = bind_reuseport("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1
        # A socket without SO_REUSEPORT cannot join them: the start fails there.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", ports.pop()))
    finally:
        for s in socks:
            s.close()


def test_a_port_held_without_reuseport_fails_the_bind_and_leaves_nothing_open() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(OSError):
            bind_reuseport("127.0.0.1", held.getsockname()[1], 2)


class _Worker:
    """A DecisionStore answered over a real bridge, as a worker answers the control process."""

    def __init__(self, retention: int = 10_000) -> None:
        self.store = DecisionStore(retention, Registry())
        ours, theirs = socket.socketpair()
        store = self.store

        def page(rid: str, after: str | None, limit: int) -> list[object]:
            found, more = store.packed_by_request_sorted(rid, after=after, limit=limit)
            return [[decisions_fragment(d) for d in found], more]

        self.server = BridgeServer(
            ours,
            ops={
                "decision": lambda did: (
                    None if (p := store.packed(did)) is None else decisions_fragment(p)
                ),
                "by_request_sorted": page,
                "explanation": lambda did: (
                    None if (p := store.packed_explanation(did)) is None else decisions_fragment(p)
                ),
                "contains_many": store.contains_many,
                "newest_forgotten": lambda: store.newest_forgotten,
                "hello": lambda: {"started": 0.0},
            },
        )
        self.server.start()
        self.client = BridgeClient(theirs)
        self.client.start()

    def close(self) -> None:
        self.client.close()
        self.server.close()


def decisions_fragment(data: bytes) -> object:
    return orjson.Fragment(data)


@pytest.fixture
def two() -> Iterator[list[_Worker]]:
    ws = [_Worker(), _Worker()]
    yield ws
    for w in ws:
        w.close()


@pytest.mark.usefixtures("minting")
def test_pages_by_request_id_merge_both_workers_in_order(two: list[_Worker]) -> None:
    base = full_decision()
    made: list[str] = []
    for n in range(17):
        k = 0 if n % 3 else 1
        decisions.set_worker(k)
        call = decisions.new_call_id()
        rows = [dataclasses.replace(base, call_id=call, request_id="shared", row=r) for r in (0, 1)]
        two[k].store.add(rows)
        made += [f"{call}/0", f"{call}/1"]
    fanned = FannedDecisions([w.client for w in two])
    for limit in (1, 3, 7, 34, 100):
        got: list[str] = []
        after: str | None = None
        while True:
            page, more = fanned.by_request("shared", after=after, limit=limit)
            got += [d.decision_id for d in page]
            if not more:
                break
            after = page[-1].decision_id
        assert got == sorted(made, key=decisions.split_decision_id), limit
    # By id: the worker the id names, and nobody for an index past the workers.
    d = fanned.get(made[5])
    assert d is not None and d.decision_id == made[5]
    stray = made[5][:30] + "05/1"
    assert fanned.get(stray) is None
    assert fanned.contains_many([made[0], stray, made[-1]]) == [True, False, True]
    # An explanation is asked of the worker that holds its decision.
    held = two[1].store.get(made[0])
    assert held is not None and decisions.worker_of(made[0]) == 1
    two[1].store.set_explanation(held, {"base_value": 0.25})
    assert fanned.get_explanation(made[0]) == {"base_value": 0.25}
    assert fanned.get_explanation(made[2]) is None


def test_metrics_are_summed_and_worst_cases_kept() -> None:
    def fam(name: str, kind: str, children: list[object], bounds: list[float] = []) -> list[object]:  # noqa: B006
        labels = ["thread"] if name == "sidecar_thread_alive" else []
        return [name, "help", kind, labels, bounds, children]

    a = [
        fam("sidecar_requests_total", "counter", [[[], 3.0]]),
        fam("sidecar_decision_queue_depth", "gauge", [[[], 2.0]]),
        fam("sidecar_oldest_unacked_event_age_seconds", "gauge", [[[], 1.5]]),
        fam("sidecar_thread_alive", "gauge", [[["decisions"], 1.0]]),
        fam("sidecar_latency", "histogram", [[[], [[1, 2, 0], 0.5]]], [0.1, 1.0]),
    ]
    b = [
        fam("sidecar_requests_total", "counter", [[[], 4.0]]),
        fam("sidecar_decision_queue_depth", "gauge", [[[], 5.0]]),
        fam("sidecar_oldest_unacked_event_age_seconds", "gauge", [[[], 0.5]]),
        fam("sidecar_thread_alive", "gauge", [[["decisions"], 0.0]]),
        fam("sidecar_latency", "histogram", [[[], [[0, 1, 1], 2.0]]], [0.1, 1.0]),
    ]
    out = {f[0]: f[5] for f in combine([a, b])}
    assert out["sidecar_requests_total"] == [[[], 7.0]]
    assert out["sidecar_decision_queue_depth"] == [[[], 7.0]]
    assert out["sidecar_oldest_unacked_event_age_seconds"] == [[[], 1.5]]
    assert out["sidecar_thread_alive"] == [[["decisions"], 0.0]]
    assert out["sidecar_latency"] == [[[], [[1, 3, 1], 2.5]]]


def test_a_nan_that_crossed_the_workers_bridges_as_null_is_summed_as_nan() -> None:
    """JSON has no NaN: each worker's snapshot crosses its bridge with null in its place,
    which summing or taking the largest would fail on (a scrape answering 500)."""
    clients = []
    for _ in range(2):
        registry = Registry()
        registry.gauge("sidecar_decision_queue_depth", "Q", fn=lambda: float("nan"))
        registry.gauge("sidecar_explainer_fidelity_max_diff", "F", fn=lambda: float("nan"))
        ours, theirs = socket.socketpair()
        BridgeServer(ours, ops={"metrics": lambda skip, r=registry: snapshot(r, skip)}).start()
        client = BridgeClient(theirs)
        client.start()
        clients.append(client)
    try:
        out = {f[0]: f[5] for f in fetch_metrics(clients, [])}
    finally:
        for client in clients:
            client.close()
    assert math.isnan(out["sidecar_decision_queue_depth"][0][1])
    assert math.isnan(out["sidecar_explainer_fidelity_max_diff"][0][1])


@pytest.mark.usefixtures("minting")
def test_the_newest_forgotten_call_is_the_newest_any_worker_forgot() -> None:
    two = [_Worker(), _Worker(retention=2)]
    fanned = FannedDecisions([w.client for w in two])
    # Neither forgot anything: the horizon is the later start (both 0.0 here).
    assert fanned.newest_forgotten == f"{0:032x}"
    decisions.set_worker(1)
    calls = [decisions.new_call_id() for _ in range(3)]
    for c in calls:  # worker 1 keeps two rows: the first call is forgotten
        two[1].store.add([dataclasses.replace(full_decision(), call_id=c, request_id=None, row=0)])
    assert fanned.newest_forgotten == calls[0]
    for w in two:
        w.close()


def test_an_answer_that_comes_after_its_caller_gave_up_leaves_the_bridge_up() -> None:
    """A readiness check that times out (a worker stopped, a blocked loop) cancels its
    future; the late answer must not end the reader (for worker 0: the control process)."""
    ours, theirs = socket.socketpair()
    release = threading.Event()
    server = BridgeServer(ours, ops={"slow": lambda: release.wait(10), "echo": lambda v: v})
    closed = threading.Event()
    client = BridgeClient(theirs, on_close=closed.set, timeout_s=0.2)
    server.start()
    client.start()
    try:
        with pytest.raises(BridgeError, match="no answer"):
            asyncio.run(client.acall("slow"))
        release.set()
        assert client.call("echo", 7) == 7  # answered after the late one was read
        assert not closed.is_set() and not client.closed
    finally:
        client.close()
        server.close()
