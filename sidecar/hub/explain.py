"""On-demand explanations at the hub, for decisions their sidecar did not sample.

Each model in `hub.models` is loaded once at start with the `explainers`
library (a model that cannot be explained faithfully stops the start, naming
the key). A computed explanation is stored in the `explanations` table with
the decision's own time, so it lives in the decision's day partition and goes
with it; its event id is the one the sidecar would give the same explanation,
so a sampled one arriving later is the same row. It is marked
`"source": "on_demand"`, so a lookup can say which it is.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import orjson
from psycopg_pool import ConnectionPool

from explainers.errors import ExplainerError
from explainers.explainer import Explainer
from sidecar.config import ExplainerSettings, HubModel
from sidecar.decisions import Decision
from sidecar.hub import schema
from sidecar.hub.db import Conn
from sidecar.pipeline.explain import decision_row, load_explainer
from sidecar.sinks import events

log = logging.getLogger("sidecar.hub")


def load_models(models: dict[str, HubModel], options: ExplainerSettings) -> dict[str, Explainer]:
    """Every configured model's explainer; ExplainerError names the `hub.models` key."""
    # One thread each: the hub explains one decision per lookup, on the lookup's thread.
    return {
        name: load_explainer(
            m.artifact,
            m.version,
            m.background,
            m.feature_names,
            options,
            threads=1,
            gil_yield_rows=0,
            key=f"hub.models.{name}",
        )
        for name, m in models.items()
    }


class HubExplainer:
    """`explain_now` for the hub's lookups: the stored on-demand explanation, or a new one."""

    def __init__(
        self,
        pool: ConnectionPool[Conn],
        models: dict[str, HubModel],
        explainers: dict[str, Explainer],
    ) -> None:
        self._pool = pool
        self._models = models
        self._explainers = explainers

    def _explainer(self, decision: Decision) -> Explainer:
        m = self._models.get(decision.model_name)
        if m is None:
            raise ExplainerError(f"no hub.models entry for model {decision.model_name!r}")
        if m.version is not None and m.version != decision.model_version:
            raise ExplainerError(
                f"hub.models.{decision.model_name} is version {m.version}, the decision's is"
                f" {decision.model_version}"
            )
        return self._explainers[decision.model_name]

    def __call__(self, decision: Decision) -> dict[str, Any]:
        did = decision.decision_id
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT body FROM explanations WHERE decision_id = %s"
                " AND body::json->>'source' = 'on_demand' LIMIT 1",
                (did,),
            ).fetchone()
        if row is not None:
            stored: dict[str, Any] = orjson.loads(row[0])
            return stored
        explainer = self._explainer(decision)
        body: dict[str, Any] = explainer.explain([decision_row(decision, explainer.n_features)])[
            0
        ].to_dict()
        event = events.explanation_event(decision, body, time=decision.time)
        event["source"] = "on_demand"
        day = dt.datetime.fromtimestamp(decision.time, dt.UTC).date()
        with self._pool.connection() as conn:
            schema.ensure_partitions(conn, [day])
            with conn.transaction():
                conn.execute(
                    "INSERT INTO explanations (event_id, time, decision_id, body)"
                    " VALUES (%s, to_timestamp(%s), %s, %s) ON CONFLICT DO NOTHING",
                    (event["event_id"], decision.time, did, orjson.dumps(event).decode()),
                )
        # The stored shape, as a later lookup (and a sampled explanation) answers it.
        return event
