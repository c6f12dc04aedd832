"""The contract between the decision pipeline and wherever events go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from sidecar.sinks.gaps import GapLedger

EventKind = Literal["decision", "explanation", "review", "gap", "outcome"]


class EventSink(Protocol):
    """Accepts events from any thread without blocking on network or fsync.

    `gaps` is the sink's gap ledger: whoever loses an event before or inside the sink
    notes it there, and the sink emits the gap records (started and closed with it).
    """

    gaps: GapLedger

    def start(self) -> None:
        """Start background delivery (threads, replay of what a previous run left)."""

    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        """Accept one event (key = decision id). False when it was shed; the sink counts that."""

    def publish_many(self, kind: EventKind, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Accept (key, body) events of one kind together; returns how many were accepted."""

    def ready(self) -> bool:
        """True while the sink accepts events (a spooling sink stays ready while the broker is down)."""

    def has_room(self, pending: int = 0) -> bool:
        """Whether decision events published now would be kept, after `pending` admitted ones (the reject policy asks before forwarding)."""

    def health(self) -> dict[str, bool]:
        """Readiness checks by name (threads alive, disk healthy), each True when fine."""

    def refuse_new(self) -> None:
        """Shutting down with the background stuck: refuse new events (each noted in a gap record)."""

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed within the timeout and stop."""
