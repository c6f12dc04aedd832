"""Decisions and explanations at the hub: by id, by the client's request id, and by model, time and group.

Implements the control plane's `DecisionSource`, so the hub answers with the
same shapes as a sidecar (`sidecar.control.lookup`, `sidecar.review.schemas`).
Stored rows are the events as they were sent; a decision is rebuilt from its
event by `DECISION_FIELDS` (its time from the stored timestamp).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from sidecar.control.lookup import decision_from_dict
from sidecar.control.store import MAX_PAGE
from sidecar.decisions import DECISION_FIELDS, Decision, split_decision_id
from sidecar.hub.db import Conn
from sidecar.review.model import normalise_item_id

# A call id is a UUIDv7 minted when the call arrived (`sidecar.decisions.new_call_id`), and
# the decision's time is when it arrived, on the same clock: a lookup by id reads only the
# partitions within a day of the time its id carries, not every day kept.
ID_WINDOW_S = 86_400.0


def id_time(decision_id: str) -> float | None:
    """The Unix time a sidecar-minted decision id carries; None for ids of another shape."""
    call_id, _ = split_decision_id(decision_id)
    if len(call_id) != 32 or call_id[12] != "7":
        return None
    try:
        return int(call_id[:12], 16) / 1000.0
    except ValueError:
        return None


def decision_dict(stored: str | dict[str, Any], epoch: float) -> dict[str, Any]:
    """A decision event's body (as stored: its JSON text) as the control plane's decision dict
    (`decision_to_dict`'s shape)."""
    body = orjson.loads(stored) if isinstance(stored, str) else stored
    d = {name: body[name] for name in DECISION_FIELDS if name in body}
    d["time"] = epoch
    d["group_attributes"] = dict(body.get("group_attributes") or {})
    d["decision_id"] = body["decision_id"]
    return d


class HubDecisions:
    """The decisions table's read side (a `sidecar.control.lookup.DecisionSource`)."""

    def __init__(self, pool: ConnectionPool[Conn]) -> None:
        self._pool = pool

    @property
    def pool(self) -> ConnectionPool[Conn]:
        return self._pool

    def get_dict(self, decision_id: str) -> dict[str, Any] | None:
        key = normalise_item_id(decision_id)
        at = id_time(key)
        sql = "SELECT body, extract(epoch FROM time)::float8 FROM decisions WHERE decision_id = %s"
        args: list[Any] = [key]
        if at is not None:
            sql += " AND time >= to_timestamp(%s) AND time < to_timestamp(%s)"
            args += [at - ID_WINDOW_S, at + ID_WINDOW_S]
        with self._pool.connection() as conn:
            row = conn.execute(f"{sql} LIMIT 1".encode(), args).fetchone()
        return None if row is None else decision_dict(row[0], float(row[1]))

    def get(self, decision_id: str) -> Decision | None:
        found = self.get_dict(decision_id)
        return None if found is None else decision_from_dict(found)

    def get_explanation(self, decision_id: str) -> dict[str, Any] | None:
        key = normalise_item_id(decision_id)
        at = id_time(key)
        # Explained after it was made: only a lower bound.
        since = "" if at is None else " AND time >= to_timestamp(%s)"
        args: list[Any] = [key] if at is None else [key, at - ID_WINDOW_S]
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT body FROM explanations WHERE decision_id = %s"
                f"{since} AND body::json->>'source' IS DISTINCT FROM 'on_demand'"
                " ORDER BY time DESC LIMIT 1".encode(),
                args,
            ).fetchone()
        if row is None:
            return None
        body: dict[str, Any] = orjson.loads(row[0])
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
