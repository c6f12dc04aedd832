"""The contract between the decision pipeline and wherever events go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

EventKind = Literal["decision", "explanation", "review"]


class EventSink(Protocol):
    """Accepts events from any thread without blocking on network or fsync."""

    def start(self) -> None:
        """Start background delivery (threads, replay of what a previous run left)."""

    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        """Accept one event (key = decision id). False when it was shed; the sink counts that."""

    def publish_many(self, kind: EventKind, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Accept (key, body) events of one kind together; returns how many were accepted."""

    def ready(self) -> bool:
        """True while the sink accepts events (a spooling sink stays ready while the broker is down)."""

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed within the timeout and stop."""
