"""One report from every shard's stored state: what instance 0 and the hub's dashboard both show.

States merge by adding integer sums, so the order and the split do not matter:
however the shards were spread over instances, the merged figures are those one
reader of every event computes.
"""

from __future__ import annotations

import heapq
from typing import Any

from sidecar.config import Settings
from sidecar.monitor.drift import Reference
from sidecar.monitor.report import ModelInfo, build
from sidecar.monitor.state import State
from sidecar.monitor.store import DatabaseStore, FolderStore, StateStore, current_shard

WAITING_IDS = 20


def open_store(settings: Settings) -> StateStore:
    m = settings.monitor
    if m.state_store == "folder":
        return FolderStore(m.state_dir)
    url = settings.hub.database_url
    if url is None or not url.get_secret_value():
        raise ValueError(
            "config key 'hub.database_url' is required by monitor.state_store = \"database\""
            " (set SIDECAR_HUB__DATABASE_URL)"
        )
    return DatabaseStore(url.get_secret_value(), m.group_id)


def merged_report(
    settings: Settings,
    ref: Reference | None,
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]],
) -> dict[str, Any] | None:
    """The report over the stored shards of the present sharding; None when there are none."""
    total: State | None = None
    labels: list[str] = []
    favourable: str | None = None
    waiting: set[str] = set()
    for shard, state, meta in rows:
        if not current_shard(shard, settings.monitor.instances):
            continue
        part = State.from_dict(state)
        if total is None:
            total = part
        else:
            total.merge(part)
        labels = labels or list(meta.get("class_labels") or [])
        favourable = favourable or meta.get("favourable_label")
        waiting.update(meta.get("waiting_outcome_ids") or [])
    if total is None:
        return None
    info = ModelInfo(
        class_labels=labels or list(settings.model.class_labels),
        favourable_label=favourable or settings.model.favourable_label,
        artifact=settings.model.artifact,
    )
    return build(
        total,
        settings.monitor,
        info,
        ref,
        waiting_outcome_ids=heapq.nsmallest(WAITING_IDS, waiting),
    )
