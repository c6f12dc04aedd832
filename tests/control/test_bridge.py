"""The bridge between the data plane's process and the control process: ops, errors, limits."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sidecar.control.bridge import (
    BridgeClient,
    BridgeClosed,
    BridgeError,
    BridgeServer,
    encode,
    read_frame,
)

LIMIT = 64 << 10


class Pair:
    def __init__(self, server: BridgeServer, client: BridgeClient, closed: threading.Event) -> None:
        self.server = server
        self.client = client
        self.closed = closed


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def pair(loop: asyncio.AbstractEventLoop) -> Iterator[Pair]:
    ours, theirs = socket.socketpair()
    held = {"a/0": b'["a",0,{"x":1}]'}

    def fails() -> None:
        raise ValueError("broken on purpose")

    async def on_loop(x: int) -> int:
        return x * 2

    server = BridgeServer(
        ours,
        ops={
            "get": lambda key: None if key not in held else orjson.Fragment(held[key]),
            "echo": lambda value: value,
            "big": lambda n: "x" * int(n),
            "fails": fails,
        },
        loop_ops={"double": on_loop},
        loop=loop,
        max_message=LIMIT,
    )
    closed = threading.Event()
    client = BridgeClient(theirs, on_close=closed.set, max_message=LIMIT, timeout_s=5)
    server.start()
    client.start()
    yield Pair(server, client, closed)
    client.close()
    server.close()


def test_ops_are_answered_and_held_bytes_cross_unparsed(pair: Pair) -> None:
    assert pair.client.call("get", "a/0") == ["a", 0, {"x": 1}]
    assert pair.client.call("get", "b/0") is None
    assert pair.client.call("echo", {"k": [1, 2.5, None]}) == {"k": [1, 2.5, None]}
    assert pair.client.call("double", 21) == 42  # run on the loop, answered from it


def test_a_failing_or_unknown_op_is_an_error_and_the_bridge_stays_up(pair: Pair) -> None:
    with pytest.raises(BridgeError, match="broken on purpose"):
        pair.client.call("fails")
    with pytest.raises(BridgeError, match="unknown op 'nope'"):
        pair.client.call("nope")
    assert pair.client.call("echo", 1) == 1


def test_an_answer_past_the_size_limit_is_refused_and_the_bridge_stays_up(pair: Pair) -> None:
    assert len(pair.client.call("big", LIMIT - 100)) == LIMIT - 100
    with pytest.raises(BridgeError, match="over the bridge's"):
        pair.client.call("big", LIMIT)
    assert pair.client.call("echo", "still here") == "still here"


def test_a_request_past_the_size_limit_is_refused_before_it_is_sent(pair: Pair) -> None:
    with pytest.raises(BridgeError, match="over the bridge's"):
        pair.client.call("echo", "y" * LIMIT)
    assert pair.client.call("echo", "still here") == "still here"
    assert not pair.closed.is_set()


def test_a_frame_announcing_more_than_the_limit_closes_the_bridge() -> None:
    ours, theirs = socket.socketpair()
    server = BridgeServer(ours, ops={"echo": lambda v: v}, max_message=LIMIT)
    server.start()
    with theirs:
        theirs.sendall((LIMIT + 1).to_bytes(4, "big") + b"[")
        # The server does not read past the header: it closes (a reset, when what it left
        # unread was still queued), and says no more.
        theirs.settimeout(10)
        try:
            said = theirs.recv(1)
        except ConnectionResetError:
            said = b""
        assert said == b""
    server.join(10)


def test_a_peer_that_goes_away_fails_waiting_calls_and_runs_on_close(loop: Any) -> None:
    ours, theirs = socket.socketpair()
    release = threading.Event()
    server = BridgeServer(ours, ops={"wait": lambda: release.wait(10)}, max_message=LIMIT)
    closed = threading.Event()
    client = BridgeClient(theirs, on_close=closed.set, max_message=LIMIT, timeout_s=10)
    server.start()
    client.start()
    waiting = client.submit("wait")
    ours.shutdown(socket.SHUT_RDWR)  # the data plane's end goes, as when its process dies
    assert closed.wait(10)
    with pytest.raises(BridgeClosed):
        waiting.result(10)
    with pytest.raises(BridgeClosed):
        client.call("wait")
    release.set()
    client.close()


def test_frames_round_trip_and_a_short_stream_is_a_close() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode([1, "op", ["x"]], LIMIT))
        assert read_frame(b, LIMIT) == [1, "op", ["x"]]
        a.sendall(encode([2, "op", []], LIMIT)[:5])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(BridgeClosed):
            read_frame(b, LIMIT)
