"""Decisions and explanations at the hub: by id, by the client's request id, and by model, time and group.

Implements the control plane's `DecisionSource`, so the hub answers with the
same shapes as a sidecar (`sidecar.control.lookup`, `sidecar.review.schemas`).
Stored rows are the events as they were sent; a decision is rebuilt from its
event by `DECISION_FIELDS` (its time from the stored timestamp).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from sidecar.control.lookup import decision_from_dict
from sidecar.control.store import MAX_PAGE
from sidecar.decisions import DECISION_FIELDS, Decision
from sidecar.hub.db import Conn
from sidecar.review.model import normalise_item_id


def decision_dict(body: dict[str, Any], epoch: float) -> dict[str, Any]:
    """A decision event's body as the control plane's decision dict (`decision_to_dict`'s shape)."""
    d = {name: body[name] for name in DECISION_FIELDS if name in body}
    d["time"] = epoch
    d["group_attributes"] = dict(body.get("group_attributes") or {})
    d["decision_id"] = body["decision_id"]
    return d


class HubDecisions:
    """The decisions table's read side (a `sidecar.control.lookup.DecisionSource`)."""

    def __init__(self, pool: ConnectionPool[Conn]) -> None:
        self._pool = pool

    def get_dict(self, decision_id: str) -> dict[str, Any] | None:
        key = normalise_item_id(decision_id)
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT body, extract(epoch FROM time)::float8 FROM decisions"
                " WHERE decision_id = %s LIMIT 1",
                (key,),
            ).fetchone()
        return None if row is None else decision_dict(row[0], float(row[1]))

    def get(self, decision_id: str) -> Decision | None:
        found = self.get_dict(decision_id)
        return None if found is None else decision_from_dict(found)

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT body FROM explanations WHERE decision_id = %s"
                " AND body->>'source' IS DISTINCT FROM 'on_demand' ORDER BY time DESC LIMIT 1",
                (normalise_item_id(decision_id),),
            ).fetchone()
        if row is None:
            return None
        body: dict[str, Any] = row[0]
        return body

    def by_request(
        self, request_id: str, *, after: str | None = None, limit: int = MAX_PAGE
    ) -> tuple[list[Decision], bool]:
        found, more = self.search(request_id=request_id, after=after, limit=limit)
        return [decision_from_dict(d) for d in found], more

    def search(
        self,
        *,
        request_id: str | None = None,
        model: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        groups: dict[str, str] | None = None,
        after: str | None = None,
        limit: int = MAX_PAGE,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Decisions matching every given filter, in decision id order (ids are time-ordered),
        at most `limit` after the decision id `after`, and whether more follow."""
        limit = max(1, min(limit, MAX_PAGE))
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("request_id = %s", request_id),
            ("model_name = %s", model),
            ("time >= %s", since),
            ("time < %s", until),
            ("decision_id > %s", after),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        if groups:
            where.append("group_attributes @> %s")
            args.append(Jsonb(groups))
        sql = (
            "SELECT body, extract(epoch FROM time)::float8 FROM decisions"
            f" {'WHERE ' + ' AND '.join(where) if where else ''}"
            " ORDER BY decision_id LIMIT %s"
        )
        args.append(limit + 1)
        with self._pool.connection() as conn:
            rows = conn.execute(sql.encode(), args).fetchall()
        page = [decision_dict(body, float(epoch)) for body, epoch in rows[:limit]]
        return page, len(rows) > limit
