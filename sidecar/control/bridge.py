"""The one channel between the data plane's process and the control plane's.

A Unix socket pair carrying length-prefixed orjson messages: a request is
`[id, op, args]`, its answer `[id, ok, result]` (`ok` false: `result` says why).
Only the control process asks; the data plane answers, from a thread of its own
(`BridgeServer`), never from the loop that forwards inference calls: a blocked
data-plane loop does not stop `/healthz` or `/metrics`. An op that must run on
that loop (the upstream's readiness) is handed to it and answered when done.

What the data plane does per op is bounded and cheap: a dict lookup that returns
the bytes the decision store already holds (embedded as `orjson.Fragment`, not
parsed and re-serialised), the metrics' raw values, one readiness check, one
event handed to the sink. Everything heavier (HTTP, JSON rendering, SQLite,
explanations, metrics text) is the control process's.

Messages are bounded by `max_message` bytes both ways: a sender refuses to send a
bigger one (the op fails with `BridgeError`, the channel stays up); a receiver
that is told of a bigger one closes the channel (its peer is not this code).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import orjson

log = logging.getLogger("sidecar.control")

# The largest message either side sends or takes. A page of lookups by request id
# (100 decisions) of the widest rows the data plane accepts fits; past it the op is
# refused, not the channel.
MAX_MESSAGE = 64 << 20
_HEADER = struct.Struct("!I")
# How long the control process waits for an answer before the op fails.
CALL_TIMEOUT_S = 5.0

SyncOp = Callable[..., Any]
AsyncOp = Callable[..., Coroutine[Any, Any, Any]]


class BridgeError(Exception):
    """An op across the bridge failed: refused, too large, timed out, or the peer is gone."""


class BridgeClosed(BridgeError):
    """The other process closed the bridge."""


def encode(message: Any, max_message: int) -> bytes:
    """One frame: a 4-byte big-endian length, then the orjson body; BridgeError past the limit."""
    body = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(body) > max_message:
        raise BridgeError(f"message of {len(body)} bytes is over the bridge's {max_message}")
    return _HEADER.pack(len(body)) + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise BridgeClosed("the bridge was closed")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket, max_message: int) -> Any:
    """The next message; BridgeClosed at end of stream or a frame over the limit."""
    (size,) = _HEADER.unpack(_read_exact(sock, _HEADER.size))
    if size > max_message:
        raise BridgeClosed(f"peer sent a {size}-byte message, over the bridge's {max_message}")
    return orjson.loads(_read_exact(sock, size))


class BridgeServer:
    """The data plane's side: answers the control process's ops from its own thread."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        ops: Mapping[str, SyncOp],
        loop_ops: Mapping[str, AsyncOp] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self._sock = sock
        self._ops = dict(ops)
        self._loop_ops = dict(loop_ops or {})
        self._loop = loop
        self._max = max_message
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="control-bridge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _send(self, rid: int, ok: bool, result: Any) -> None:
        try:
            frame = encode([rid, ok, result], self._max)
        except BridgeError as exc:
            frame = encode([rid, False, str(exc)], self._max)
        except TypeError as exc:  # a result orjson cannot write: a bug, said to the caller
            frame = encode([rid, False, f"answer not serialisable: {exc}"], self._max)
        with self._send_lock, contextlib.suppress(OSError):
            self._sock.sendall(frame)

    def _run(self) -> None:
        try:
            while True:
                rid, op, args = read_frame(self._sock, self._max)
                self._dispatch(int(rid), str(op), list(args))
        except BridgeClosed:
            pass
        except OSError as exc:
            log.info("control bridge closed: %s", exc)
        except Exception:
            log.exception("control bridge stopped")
        finally:
            self.close()

    def _dispatch(self, rid: int, op: str, args: list[Any]) -> None:
        fn = self._ops.get(op)
        if fn is not None:
            try:
                result = fn(*args)
            except Exception as exc:
                log.exception("control bridge op %s failed", op)
                self._send(rid, False, f"{op} failed: {exc}")
                return
            self._send(rid, True, result)
            return
        coro_fn = self._loop_ops.get(op)
        if coro_fn is None or self._loop is None:
            self._send(rid, False, f"unknown op {op!r}")
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop)
        except RuntimeError as exc:  # the loop is closed: the service is stopping
            self._send(rid, False, f"{op}: {exc}")
            return

        # Answered when the loop is done with it; this thread goes on with the next op.
        def answer(f: concurrent.futures.Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                self._send(rid, True, f.result())
            else:
                self._send(rid, False, f"{op} failed: {exc}")

        fut.add_done_callback(answer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def join(self, timeout_s: float) -> None:
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout_s)


class BridgeClient:
    """The control process's side: thread-safe calls; `on_close` runs once when the data plane goes."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        on_close: Callable[[], None] | None = None,
        max_message: int = MAX_MESSAGE,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self._sock = sock
        self._max = max_message
        self._timeout = timeout_s
        self._on_close = on_close
        self._ids = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._closed: str | None = None
        self._reader = threading.Thread(target=self._read, name="control-bridge", daemon=True)

    def start(self) -> None:
        self._reader.start()

    @property
    def closed(self) -> bool:
        """The data plane's end is gone: every call fails from now on."""
        return self._closed is not None

    def submit(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        """Send `op` now; the future holds its answer (or BridgeError)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        rid = next(self._ids)
        try:
            frame = encode([rid, op, list(args)], self._max)
        except BridgeError as exc:
            fut.set_exception(BridgeError(f"{op}: {exc}"))
            return fut
        with self._lock:
            if self._closed is not None:
                fut.set_exception(BridgeClosed(self._closed))
                return fut
            self._waiting[rid] = fut
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                del self._waiting[rid]
                fut.set_exception(BridgeClosed(f"the bridge is closed: {exc}"))
        return fut

    def call(self, op: str, *args: Any) -> Any:
        """Send `op` and wait for its answer (at most the call timeout)."""
        try:
            return self.submit(op, *args).result(self._timeout)
        except concurrent.futures.TimeoutError:
            raise BridgeError(f"{op}: no answer from the data plane in {self._timeout} s") from None

    async def acall(self, op: str, *args: Any) -> Any:
        """`call` for a coroutine: the loop is not held while the data plane answers."""
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(self.submit(op, *args)), self._timeout
            )
        except TimeoutError:
            raise BridgeError(f"{op}: no answer from the data plane in {self._timeout} s") from None

    def _read(self) -> None:
        reason = "the data plane closed the bridge"
        try:
            while True:
                rid, ok, result = read_frame(self._sock, self._max)
                with self._lock:
                    fut = self._waiting.pop(int(rid), None)
                if fut is None:
                    continue
                # Cancelled, its caller gave up (acall's timeout): the answer is dropped. Set,
                # it would raise here and end this reader, closing a working bridge.
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    if ok:
                        fut.set_result(result)
                    else:
                        fut.set_exception(BridgeError(str(result)))
        except BridgeClosed as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"the bridge failed: {exc}"
        finally:
            with self._lock:
                self._closed = reason
                waiting, self._waiting = self._waiting, {}
            for fut in waiting.values():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    fut.set_exception(BridgeClosed(reason))
            if self._on_close is not None:
                self._on_close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
