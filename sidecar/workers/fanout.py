"""The control process's view of N workers: one bridge each, asked one or all.

Worker 0 is the service's own process, reached over the bridge the control
process was started with; workers 1..N-1 over their listening Unix sockets
(`WorkerLink`, connected again after either side restarts). What it asks:

- a decision or its explanation: the one worker whose index is in the id's low
  8 bits (`sidecar.decisions.worker_of`);
- decisions by request id: every worker, for the page after the cursor in
  (call id, row) order (time, then id within a millisecond), merged;
- readiness: every worker; ready only when each one is;
- metrics: every worker's raw families, combined (`sidecar.workers.metrics`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from sidecar.control.bridge import CALL_TIMEOUT_S, BridgeClient, BridgeError
from sidecar.control.metrics_view import restore_nan
from sidecar.decisions import Decision, from_values, worker_of
from sidecar.outcomes.known import call_id_at
from sidecar.workers.metrics import combine

log = logging.getLogger("sidecar.workers")


class Link(Protocol):
    def submit(self, op: str, *args: Any) -> concurrent.futures.Future[Any]: ...
    def call(self, op: str, *args: Any) -> Any: ...
    async def acall(self, op: str, *args: Any) -> Any: ...


class WorkerLink:
    """A bridge to one worker over its Unix socket, connected on first use and again
    after it closed (the worker restarted: the connection waits in the socket's backlog
    for the worker started in its place)."""

    def __init__(self, index: int, path: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.index = index
        self._path = path
        self._timeout = timeout_s
        self._client: BridgeClient | None = None
        self._lock = threading.Lock()

    def _connected(self) -> BridgeClient:
        with self._lock:
            client = self._client
            if client is None or client.closed:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(1.0)
                try:
                    sock.connect(self._path)
                except OSError as exc:
                    sock.close()
                    raise BridgeError(f"worker {self.index} cannot be reached: {exc}") from None
                sock.settimeout(None)
                client = self._client = BridgeClient(sock, timeout_s=self._timeout)
                client.start()
            return client

    def submit(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        try:
            return self._connected().submit(op, *args)
        except BridgeError as exc:
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            fut.set_exception(exc)
            return fut

    def call(self, op: str, *args: Any) -> Any:
        return self._connected().call(op, *args)

    async def acall(self, op: str, *args: Any) -> Any:
        return await self._connected().acall(op, *args)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def ask_all(links: Sequence[Link], op: str, *args: Any) -> list[Any]:
    """`op` sent to every worker at once; their answers in worker order (BridgeError if any fails)."""
    futures = [link.submit(op, *args) for link in links]
    out = []
    for k, fut in enumerate(futures):
        try:
            out.append(fut.result(CALL_TIMEOUT_S))
        except concurrent.futures.TimeoutError:
            raise BridgeError(f"{op}: no answer from worker {k} in {CALL_TIMEOUT_S} s") from None
        except BridgeError as exc:
            raise BridgeError(f"worker {k}: {exc}") from None
    return out


class FannedDecisions:
    """The decision store's read side (`DecisionSource`, `DecisionIndex`) across workers."""

    def __init__(self, links: Sequence[Link]) -> None:
        self._links = list(links)

    def _owner(self, decision_id: str) -> Link | None:
        k = worker_of(decision_id)
        return self._links[k] if 0 <= k < len(self._links) else None

    def get(self, decision_id: str) -> Decision | None:
        link = self._owner(decision_id)
        values = None if link is None else link.call("decision", decision_id)
        return None if values is None else from_values(values)

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None:
        link = self._owner(decision_id)
        found: dict[str, Any] | None = (
            None if link is None else link.call("explanation", decision_id)
        )
        return found

    def by_request(
        self, request_id: str, *, after: str | None = None, limit: int = 100
    ) -> tuple[list[Decision], bool]:
        """Each worker's first `limit` after the cursor; the first `limit` of them all are the
        page, since no worker left out one that sorts before its own last."""
        pages = ask_all(self._links, "by_request_sorted", request_id, after, limit)
        rows = [from_values(v) for page, _more in pages for v in page]
        rows.sort(key=lambda d: (d.call_id, d.row))
        more = len(rows) > limit or any(bool(m) for _page, m in pages)
        return rows[:limit], more

    def contains_many(self, decision_ids: Sequence[str]) -> list[bool]:
        by_worker: dict[int, list[int]] = {}
        for i, d in enumerate(decision_ids):
            k = worker_of(d)
            if 0 <= k < len(self._links):
                by_worker.setdefault(k, []).append(i)
        held = [False] * len(decision_ids)
        futures = {
            k: self._links[k].submit("contains_many", [decision_ids[i] for i in idx])
            for k, idx in by_worker.items()
        }
        for k, fut in futures.items():
            for i, h in zip(by_worker[k], fut.result(CALL_TIMEOUT_S), strict=True):
                held[i] = bool(h)
        return held

    @property
    def newest_forgotten(self) -> str | None:
        """The newest across workers; a worker's start counts as forgetting everything before
        it (one restarted after a crash holds nothing its predecessor recorded)."""
        forgotten = ask_all(self._links, "newest_forgotten")
        hellos = ask_all(self._links, "hello")
        return max(
            f if f is not None else call_id_at(float(h["started"]))
            for f, h in zip(forgotten, hellos, strict=True)
        )


class AllReady:
    """One readiness check, asked of every worker: ready only when each one is."""

    def __init__(self, links: Sequence[Link], name: str) -> None:
        self._links = list(links)
        self._name = name

    async def __call__(self) -> bool:
        answers = await asyncio.gather(
            *(link.acall("ready", self._name) for link in self._links), return_exceptions=True
        )
        ok = True
        for k, a in enumerate(answers):
            if isinstance(a, BaseException):
                log.warning("readiness check %s, worker %d: %s", self._name, k, a)
                ok = False
            elif not a:
                ok = False
        return ok


def fetch_metrics(links: Sequence[Link], skip: list[str]) -> list[Any]:
    """Every worker's raw families summed into one set (a scrape fails when one cannot answer)."""
    return combine([restore_nan(s) for s in ask_all(links, "metrics", skip)])
