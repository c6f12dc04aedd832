"""Building a monitor over generated events, as the command does."""

from __future__ import annotations

from typing import Any

from sidecar.config.sections import MonitorSettings
from sidecar.monitor.drift import Reference
from sidecar.monitor.ingest import Ingest
from sidecar.monitor.report import ModelInfo, build
from sidecar.monitor.state import State
from tests.monitor.gen import FAVOURABLE, FEATURES, LABELS


def settings(**kw: Any) -> MonitorSettings:
    return MonitorSettings.model_validate({"min_group_size": 30, **kw})


def ingest(
    events: list[dict[str, Any]],
    s: MonitorSettings,
    reference: Reference | None = None,
    *,
    instance: int = 0,
    instances: int = 1,
) -> Ingest:
    state = State(
        feature_names=list(FEATURES), edges=reference.edges if reference is not None else []
    )
    ing = Ingest(
        state,
        window_s=s.window_s,
        class_labels=LABELS,
        favourable_label=FAVOURABLE,
        attributes=s.attributes,
        intersections=s.intersections,
        instance=instance,
        instances=instances,
    )
    ing.feed(events)
    return ing


def report(
    events: list[dict[str, Any]], s: MonitorSettings, reference: Reference | None = None
) -> dict[str, Any]:
    ing = ingest(events, s, reference)
    return build(ing.snapshot(), s, ModelInfo(LABELS, FAVOURABLE), reference, now=1_800_000_000.0)
