"""Recent decisions and their explanations, kept for lookup by id or by the client's request id.

Bounded by `decisions.retention` decisions and `decisions.retention_bytes` of
entries, explanations and index (oldest call forgotten first, all its rows at
once): very wide rows cannot grow it past the byte bound. Each entry is
kept serialised (orjson bytes), not as live objects, and each call is a tuple
of bytes, strings and numbers, replaced whole when it changes: the garbage
collector stops tracking such a tuple at the first collection it survives, so
a full store adds nothing to what a full collection walks. A hundred thousand
decisions held as dataclasses, lists and dicts are half a million objects to
walk (measured: pauses of 150-200 ms in the proxy's p99.9); held as a record
object and a list per call, 200,000 (pauses of 20-100 ms; the 2026-11-30 runs).
A client's request id that more than one call carried keeps its calls in a
deque (tracked; one per such id). The calls and the index are each split over
`SHARDS` dicts, with the calls' order in a deque: a dict of 100,000 entries
rehashes them all when it grows, holding the interpreter, and one OrderedDict
did so for 14-23 ms at 87,381 calls and at every 74,762 calls after it
(stalls in the proxy's p99.9; bench_proxy, 2026-12-01); a shard's resize is
a sixty-fourth of that. Held in memory: a restart forgets them; the
event stream is the record.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Final, Generic, TypeVar

import orjson

from sidecar.decisions import Decision, field_values, from_values, split_decision_id
from sidecar.metrics import Registry

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def _kept(data: bytes) -> bytes:
    """An exact-size copy of orjson output that is kept for long.

    orjson writes into a 4 KiB buffer and shrinks it in place; glibc leaves the
    freed tail as a hole between kept entries that later buffers do not fit.
    Kept as they come, entries of ~400 bytes cost ~4.1 KiB of memory each
    (measured), and every decision faulted a fresh page in (~1 per request on the
    proxy benchmark). The copy is exact-size and the buffer is freed whole.
    """
    return memoryview(data).tobytes()


def pack(d: Decision) -> bytes:
    """A decision as a JSON array of its field values, in `DECISION_FIELDS` order.

    An array rather than an object: the names would add ~265 bytes to each of up to
    `decisions.retention` entries. Entries live only in this process and the control
    process it starts from the same code, so the order they were packed in is the
    order they are read back in.
    """
    return _kept(orjson.dumps(field_values(d), option=_OPTS))


def unpack(data: bytes) -> Decision:
    return from_values(orjson.loads(data))


# What an entry costs beyond its bytes: the bytes object's header, its slot in the
# call's rows and, per call, its tuples, its dict slot, its place in the order and its
# key string, and the tables' room for the calls evicted and added (measured with
# tracemalloc on a store at its bound: ~330 bytes a one-row call; what is held is
# 90-100% of what is counted, tests/sinks/test_store_bounds.py).
ROW_OVERHEAD = 64
CALL_OVERHEAD = 270
# A request id's place in the index: its key and dict slot (measured the same way: ~100
# bytes for a request id that one call carried) and, once a second call carries it, a
# deque (a 64-slot block: ~800 bytes more).
INDEX_OVERHEAD = 120
DEQUE_OVERHEAD = 800
# The largest page `by_request` returns (GET /decisions?request_id=...).
MAX_PAGE = 100


# One call: its client's request id, its rows (packed; None for a row not held), its
# explanations by row (None: none yet) and what it all costs. Immutable and made of
# atomic parts, so the collector untracks it (module doc); `add` and `set_explanation`
# replace it whole.
_Call = tuple[str | None, tuple[bytes | None, ...], tuple[bytes | None, ...] | None, int]
_RID: Final = 0
_ROWS: Final = 1
_EXPL: Final = 2
_NBYTES: Final = 3


def _count(call: _Call) -> int:
    return sum(1 for r in call[_ROWS] if r is not None)


def _put(rows: list[bytes | None], row: int, data: bytes) -> bytes | None:
    """Set `rows[row]`, growing the list with None as needed; what was there."""
    if row >= len(rows):
        rows.extend([None] * (row + 1 - len(rows)))
    old = rows[row]
    rows[row] = data
    return old


V = TypeVar("V")
# A power of two: a key's shard is the low bits of its hash.
SHARDS = 64


class _Shards(Generic[V]):
    """One mapping split over `SHARDS` dicts by the key's hash (module doc: what a resize holds)."""

    __slots__ = ("_maps",)

    def __init__(self) -> None:
        self._maps: list[dict[str, V]] = [{} for _ in range(SHARDS)]

    def of(self, key: str) -> dict[str, V]:
        """The dict that holds `key`, or would."""
        return self._maps[hash(key) & (SHARDS - 1)]

    def get(self, key: str) -> V | None:
        return self.of(key).get(key)

    def __getitem__(self, key: str) -> V:
        return self.of(key)[key]


class DecisionStore:
    def __init__(
        self, retention: int, registry: Registry, retention_bytes: int = 128 << 20
    ) -> None:
        self._retention = retention
        self._retention_bytes = retention_bytes
        self._calls: _Shards[_Call] = _Shards()
        # Call ids, oldest first: the order retention forgets them in.
        self._order: deque[str] = deque()
        # The client's request id -> the call that carried it, or the calls, oldest first,
        # when more than one did.
        self._by_request: _Shards[str | deque[str]] = _Shards()
        self._rows = 0
        self._bytes = 0
        # The newest call id forgotten so far: a call newer than it, not here, never was.
        self._newest_forgotten: str | None = None
        self._lock = threading.Lock()
        self._evicted = registry.counter(
            "sidecar_decisions_forgotten_total",
            "Decisions dropped from the lookup store by retention",
        )
        registry.gauge(
            "sidecar_decisions_retained", "Decisions held for lookup", fn=lambda: float(len(self))
        )
        registry.gauge(
            "sidecar_decisions_retained_bytes",
            "Bytes the lookup store holds (entries, explanations, index; decisions.retention_bytes)",
            fn=lambda: float(self._bytes),
        )

    def __len__(self) -> int:
        return self._rows

    @property
    def nbytes(self) -> int:
        """What the store holds, as it counts it against `decisions.retention_bytes`."""
        return self._bytes

    def add(self, decisions: list[Decision]) -> None:
        # Each call's rows of this batch together: its tuple is rebuilt once, not once a row.
        batch: dict[str, tuple[str | None, list[tuple[int, bytes]]]] = {}
        for d in decisions:
            entry = batch.get(d.call_id)
            if entry is None:
                entry = batch[d.call_id] = (d.request_id, [])
            entry[1].append((d.row, pack(d)))
        with self._lock:
            for call_id, (request_id, new_rows) in batch.items():
                calls = self._calls.of(call_id)
                call = calls.get(call_id)
                if call is None:
                    call = (request_id, (), None, CALL_OVERHEAD)
                    self._order.append(call_id)
                    self._bytes += CALL_OVERHEAD
                    if request_id is not None:
                        self._index(request_id, call_id)
                rows = list(call[_ROWS])
                size = 0
                for row, data in new_rows:
                    old = _put(rows, row, data)
                    if old is None:
                        self._rows += 1
                        size += len(data) + ROW_OVERHEAD
                    else:
                        size += len(data) - len(old)
                calls[call_id] = (call[_RID], tuple(rows), call[_EXPL], call[_NBYTES] + size)
                self._bytes += size
            self._trim()

    def _index(self, request_id: str, call_id: str) -> None:
        index = self._by_request.of(request_id)
        ids = index.get(request_id)
        if ids is None:
            index[request_id] = call_id
            self._bytes += INDEX_OVERHEAD + len(request_id)
        elif isinstance(ids, str):
            index[request_id] = deque((ids, call_id))
            self._bytes += DEQUE_OVERHEAD
        else:
            ids.append(call_id)
        self._bytes += 8

    def _trim(self) -> None:
        order = self._order
        while order and (self._rows > self._retention or self._bytes > self._retention_bytes):
            call_id = order.popleft()
            call = self._calls.of(call_id).pop(call_id)
            n = _count(call)
            self._rows -= n
            self._bytes -= call[_NBYTES]
            self._evicted.inc(n)
            if self._newest_forgotten is None or call_id > self._newest_forgotten:
                self._newest_forgotten = call_id
            rid = call[_RID]
            if rid is not None:
                self._unindex(rid, call_id)

    def _unindex(self, request_id: str, call_id: str) -> None:
        index = self._by_request.of(request_id)
        ids = index[request_id]
        self._bytes -= 8
        if not isinstance(ids, str):
            if ids[0] == call_id:
                ids.popleft()
            else:
                ids.remove(call_id)
            if ids:
                return
            self._bytes -= DEQUE_OVERHEAD
        del index[request_id]
        self._bytes -= INDEX_OVERHEAD + len(request_id)

    def _call_ids(self, request_id: str) -> tuple[str, ...] | deque[str]:
        ids = self._by_request.get(request_id)
        if ids is None:
            return ()
        return (ids,) if isinstance(ids, str) else ids

    def _row(self, decision_id: str) -> tuple[_Call, int] | None:
        call_id, row = split_decision_id(decision_id)
        call = self._calls.get(call_id)
        if call is None or row >= len(call[_ROWS]):
            return None
        return call, row

    def get(self, decision_id: str) -> Decision | None:
        """By `R/i`, or a bare call id `R` for its first row."""
        data = self.packed(decision_id)
        return None if data is None else unpack(data)

    def packed(self, decision_id: str) -> bytes | None:
        """`get` as the bytes held (what crosses to the control process, unparsed)."""
        with self._lock:
            found = self._row(decision_id)
            return found[0][_ROWS][found[1]] if found is not None else None

    def contains_many(self, decision_ids: Sequence[str]) -> list[bool]:
        """Whether each decision is held, under one lock: an outcome batch asks for all at once."""
        with self._lock:
            return [self._row(d) is not None for d in decision_ids]

    @property
    def newest_forgotten(self) -> str | None:
        """The newest call id retention has dropped (None: none yet); call ids sort by time."""
        return self._newest_forgotten

    def by_request(
        self, request_id: str, *, after: str | None = None, limit: int = MAX_PAGE
    ) -> tuple[list[Decision], bool]:
        """The decisions carrying the client's `request_id`, oldest first: at most
        `limit` (up to MAX_PAGE) after the decision id `after`, and whether more follow."""
        page, more = self.packed_by_request(request_id, after=after, limit=limit)
        return [unpack(data) for data in page], more

    def packed_by_request(
        self, request_id: str, *, after: str | None = None, limit: int = MAX_PAGE
    ) -> tuple[list[bytes], bool]:
        """`by_request` as the bytes held."""
        limit = max(1, min(limit, MAX_PAGE))
        page: list[bytes] = []
        more = False
        with self._lock:
            started = after is None
            for did, data in self._rows_of(request_id):
                if not started:
                    started = did == after
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(data)
        return page, more

    def packed_by_request_sorted(
        self, request_id: str, *, after: str | None = None, limit: int = MAX_PAGE
    ) -> tuple[list[bytes], bool]:
        """`packed_by_request` in (call id, row) order, after the key `after` (a decision id
        that need not be held here): each worker's page, which the control process merges
        with the others' (`proxy.workers`)."""
        limit = max(1, min(limit, MAX_PAGE))
        start = None if after is None else split_decision_id(after)
        with self._lock:
            rows = [
                ((call_id, row), data)
                for call_id in self._call_ids(request_id)
                for row, data in enumerate(self._calls[call_id][_ROWS])
                if data is not None
            ]
        rows.sort(key=lambda r: r[0])
        if start is not None:
            rows = [r for r in rows if r[0] > start]
        return [data for _, data in rows[:limit]], len(rows) > limit

    def _rows_of(self, request_id: str) -> Iterator[tuple[str, bytes]]:
        for call_id in self._call_ids(request_id):
            for row, data in enumerate(self._calls[call_id][_ROWS]):
                if data is not None:
                    yield f"{call_id}/{row}", data

    def set_explanation(self, decision: Decision, explanation: dict[str, Any]) -> None:
        data = _kept(orjson.dumps(explanation, option=_OPTS))
        row = decision.row
        with self._lock:
            call = self._calls.get(decision.call_id)
            if call is None or row >= len(call[_ROWS]) or call[_ROWS][row] is None:
                return
            explanations = list(call[_EXPL] or ())
            old = _put(explanations, row, data)
            size = len(data) + ROW_OVERHEAD - (0 if old is None else len(old) + ROW_OVERHEAD)
            self._calls.of(decision.call_id)[decision.call_id] = (
                call[_RID],
                call[_ROWS],
                tuple(explanations),
                call[_NBYTES] + size,
            )
            self._bytes += size
            self._trim()

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None:
        data = self.packed_explanation(decision_id)
        if data is None:
            return None
        explanation: dict[str, Any] = orjson.loads(data)
        return explanation

    def packed_explanation(self, decision_id: str) -> bytes | None:
        """`get_explanation` as the bytes held."""
        with self._lock:
            found = self._row(decision_id)
            if found is None:
                return None
            explanations = found[0][_EXPL]
            row = found[1]
            return (
                explanations[row] if explanations is not None and row < len(explanations) else None
            )
