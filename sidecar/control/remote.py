"""What the control process reaches in the data plane's process, through the bridge.

Each class stands where the in-process object stood (the decision store's read
side, the event sink, a readiness check), so the routers are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sidecar.control.bridge import BridgeClient, BridgeError
from sidecar.decisions import Decision, from_values
from sidecar.metrics import Registry
from sidecar.sinks.base import EventKind
from sidecar.sinks.gaps import GapLedger

log = logging.getLogger("sidecar.control")


class RemoteDecisions:
    """The decision store's read side (a `DecisionSource` and a `DecisionIndex`), over the bridge."""

    def __init__(self, bridge: BridgeClient) -> None:
        self._bridge = bridge

    def get(self, decision_id: str) -> Decision | None:
        values = self._bridge.call("decision", decision_id)
        return None if values is None else from_values(values)

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._bridge.call("explanation", decision_id)
        return found

    def by_request(
        self, request_id: str, *, after: str | None = None, limit: int = 100
    ) -> tuple[list[Decision], bool]:
        rows, more = self._bridge.call("by_request", request_id, after, limit)
        return [from_values(v) for v in rows], bool(more)

    def contains_many(self, decision_ids: Sequence[str]) -> list[bool]:
        held: list[bool] = self._bridge.call("contains_many", list(decision_ids))
        return held

    @property
    def newest_forgotten(self) -> str | None:
        newest: str | None = self._bridge.call("newest_forgotten")
        return newest


class BridgeSink:
    """The data plane's event sink as the control process sees it: review and outcome
    events are handed across and published there, into the one sink (and its spool).

    `publish` waits for the sink's answer, so an event the sink sheds, or one that
    cannot cross (the bridge is down, or the event is past its size limit), is
    reported as shed, and its caller counts it, as with the sink itself.
    """

    def __init__(self, bridge: BridgeClient, registry: Registry) -> None:
        self._bridge = bridge
        # Nothing is lost on this side without being reported to the caller; the sink's
        # own ledger (in the data plane) records what it loses.
        self.gaps = GapLedger(registry)

    def start(self) -> None:
        """The sink is started by the data plane."""

    # One op crosses for all three: each event's answer from the sink.
    def publish(self, kind: EventKind, key: str, body: dict[str, Any]) -> bool:
        return self.publish_each(kind, [(key, body)])[0]

    def publish_many(self, kind: EventKind, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        return sum(self.publish_each(kind, items))

    def publish_each(
        self, kind: EventKind, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[bool]:
        """`publish` for each item, in one crossing: whether the sink took each one."""
        if not items:
            return []
        try:
            taken: list[bool] = self._bridge.call("publish_each", kind, [list(i) for i in items])
            return taken
        except BridgeError as exc:
            log.error("%d %s events not handed to the sink: %s", len(items), kind, exc)
            return [False] * len(items)

    def ready(self) -> bool:
        return bool(self._bridge.call("ready", "sink"))

    def has_room(self, pending: int = 0) -> bool:
        return bool(self._bridge.call("has_room", pending))

    def health(self) -> dict[str, bool]:
        """No checks of its own: the sink's are the data plane's readiness checks."""
        return {}

    def refuse_new(self) -> None:
        """The data plane's sink refuses new events when it stops."""

    def close(self, timeout_s: float = 5.0) -> None:
        """The data plane closes its sink."""


class RemoteCheck:
    """One of the data plane's readiness checks, run there (on its loop) when asked."""

    def __init__(self, bridge: BridgeClient, name: str) -> None:
        self._bridge = bridge
        self._name = name

    async def __call__(self) -> bool:
        try:
            return bool(await self._bridge.acall("ready", self._name))
        except BridgeError as exc:
            log.warning("readiness check %s: %s", self._name, exc)
            return False
