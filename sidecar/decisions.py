"""The decision: one row of one recognised inference call.

Every forwarded call gets an id of its own, minted here (`x-decision-id`, a
UUIDv7: time-ordered, unique per call even when clients reuse their request
ids); row `i` of it is the decision `{id}/{i}`. The client's own request id
(`x-request-id`, or a V2 body's `id`) is recorded beside it, never used as it.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

# What a client's request id may be to be recorded: visible ASCII, as a query
# parameter and an event field carry it. Anything else is not recorded.
_CLIENT_ID = re.compile(r"[!-~]{1,128}\Z")


# 74 random bits per id from a generator seeded once from the OS: ids stay unique
# without a getrandom() syscall per call (that showed in the per-request CPU). They
# are not secrets: every lookup by id needs a control-plane token.
_ids = random.Random(os.urandom(32))
_bits = _ids.getrandbits
_time_ns = time.time_ns
# Of 80 random bits, the version (7) and variant (0b10) replace 6: RFC 9562's layout.
_RANDOM = ((1 << 80) - 1) & ~((0xF << 76) | (0b11 << 62))
_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)


def _reseed() -> None:
    # A forked child would otherwise mint its parent's ids.
    _ids.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


# With `proxy.workers` > 1 the low 8 of the random bits carry the minting worker's index
# (`set_worker`), so the control process asks that one worker for a call it looks up.
# The constants are rebound, not tested per call: a single worker's ids cost the same.
WORKER_BITS = 8


def set_worker(index: int) -> None:
    """Mint this process's ids with worker `index` (0-255) in their low 8 bits."""
    global _RANDOM, _VERSION_VARIANT
    if not 0 <= index < 1 << WORKER_BITS:
        raise ValueError(f"worker index {index} is not in 0..255")
    _RANDOM = ((1 << 80) - 1) & ~((0xF << 76) | (0b11 << 62) | ((1 << WORKER_BITS) - 1))
    _VERSION_VARIANT = (0x7 << 76) | (0b10 << 62) | index


def worker_of(call_id: str) -> int:
    """The worker that minted `call_id` (a call id or a decision id `R/i`); only meaningful
    for ids a multi-worker service minted. -1 when it is not a call id at all."""
    rid = split_decision_id(call_id)[0]
    if len(rid) != 32:
        return -1
    try:
        return int(rid[-2:], 16)
    except ValueError:
        return -1


def new_call_id() -> str:
    """A UUIDv7 (RFC 9562: 48 bits of Unix milliseconds, then 74 random bits) as 32 hex digits.

    Without the dashes, as the ids were before they were time-ordered: the four slices
    that place them doubled the cost (0.8 against 1.3 µs, measured). `uuid.UUID(id)`
    reads it either way; ids of different milliseconds sort by time, as strings too.
    """
    return f"{((_time_ns() // 1_000_000) << 80) | (_bits(80) & _RANDOM) | _VERSION_VARIANT:032x}"


def client_request_id(value: str | None) -> str | None:
    """The client's request id when it can be recorded as it is, else None."""
    if value and _CLIENT_ID.match(value):
        return value
    return None


def decision_id(call_id: str, row: int) -> str:
    return f"{call_id}/{row}"


def split_decision_id(value: str) -> tuple[str, int]:
    """`R/i` -> (R, i); a bare `R` means its first row."""
    rid, sep, row = value.rpartition("/")
    if sep and row.isdigit():
        return rid, int(row)
    return value, 0


# Keyword-only, so no call can put a value in the wrong field when one is added. By
# position was 0.6 µs cheaper per row (0.35 against 0.95 µs for 14 arguments, measured):
# not worth a silent mix-up in the record that auditors read.
@dataclass(slots=True, kw_only=True)
class Decision:
    """What the sidecar knows about one row after the upstream answered.

    A field added here also needs a place in the decision event
    (`sidecar.sinks.events.DECISION_EVENT_KEYS`) and its JSON Schema;
    tests/test_decision_fields.py fails until it has one. The lookup store, the
    review queue's copy and the control plane's dict follow `DECISION_FIELDS`.
    """

    call_id: str  # minted per forwarded call: the decision id is `{call_id}/{row}`
    request_id: str | None = None  # the client's (x-request-id, or a V2 body's id)
    row: int
    time: float  # unix seconds, when the request arrived
    protocol: str  # "kserve_v1" | "v2" | "mlflow"
    model_name: str
    model_version: str | None
    features: list[Any] | None  # the row's feature values in the model's feature order
    feature_names: list[str] | None
    prediction: Any
    probabilities: list[float] | None
    confidence: float | None
    upstream_status: int
    upstream_latency_ms: float
    group_attributes: dict[str, str] = field(default_factory=dict)
    # Set on the hot path by the review router.
    review: str | None = None  # None | "queued" | "held"
    review_reason: str | None = None
    # Set by the sampler.
    sampled: bool = False
    sample_reason: str | None = None
    explain_requested: bool = False

    @property
    def decision_id(self) -> str:
        return f"{self.call_id}/{self.row}"


# The one list of a decision's fields, in declaration order. The lookup store packs
# decisions in this order and rebuilds them by these names; the review queue and the
# control plane's dicts carry exactly these keys (plus the derived `decision_id`).
DECISION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Decision))


def _compiled(name: str, source: str) -> Any:
    """A function compiled from source generated out of DECISION_FIELDS.

    As dataclasses compiles `__init__`: attribute reads and writes written out
    run as the specialised bytecode of hand-written code, where a loop over the
    names or operator.attrgetter takes several times longer.
    """
    scope: dict[str, Any] = {"Decision": Decision, "new": object.__new__}
    exec(source, scope)
    return scope[name]


# A decision's field values as one tuple, in DECISION_FIELDS order: 0.14 µs where
# operator.attrgetter takes 0.4 (measured). The lookup store packs every decision so.
field_values: Callable[[Decision], tuple[Any, ...]] = _compiled(
    "field_values",
    "def field_values(d):\n    return (" + "".join(f"d.{n}, " for n in DECISION_FIELDS) + ")\n",
)

# The inverse: a decision from its field values in DECISION_FIELDS order, each set by
# name. It skips `__init__`, as pickle does: every field is given, and Decision has no
# `__post_init__` (tests/test_decision_fields.py checks). Keywords instead,
# `Decision(**dict(zip(DECISION_FIELDS, values)))`, took 3.5 µs where this and the old
# positional `Decision(*values)` take 1.5 with the JSON parse (measured).
from_values: Callable[[Sequence[Any]], Decision] = _compiled(
    "from_values",
    "def from_values(v):\n    d = new(Decision)\n"
    + "".join(f"    d.{n} = v[{i}]\n" for i, n in enumerate(DECISION_FIELDS))
    + "    return d\n",
)
