"""Fleet mode does not take contests yet: refused with 409 naming the setting, never half-filed."""

from __future__ import annotations

import pytest

from sidecar.metrics import Registry
from sidecar.review.forward import HubForwardingStore
from sidecar.review.model import Conflict
from sidecar.sinks.null import NullSink


def test_the_fleet_forwarding_store_refuses_contests_naming_the_setting() -> None:
    registry = Registry()
    store = HubForwardingStore(sink=NullSink(registry), registry=registry)
    assert store.takes_contests is False
    assert store.get_contest("0190f1c2-0000-7000-8000-000000000000/0") is None
    with pytest.raises(Conflict, match=r"review\.store = hub"):
        store.contest(
            {"decision_id": "0190f1c2-0000-7000-8000-000000000000/0"},
            actor="case",
            statement="I was not late",
            corrected=None,
            rescore=None,
            reasons=None,
        )
