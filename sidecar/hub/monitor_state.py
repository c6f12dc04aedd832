"""The monitor's partial states in the hub's database: one row per (monitor group, shard).

A row holds a shard's statistics (`state`, what a report merges), what its
owner needs to go on joining (`resume`, compressed JSON), the read position
that goes with them (`offsets`: topic -> next offset of the shard's partition)
and `version`, bumped by every write. Each write is one transaction that
replaces a row only if its version is the one its writer loaded: a second
monitor that took the same shard by mistake fails loudly instead of counting
its events again.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg.types.json import Jsonb, set_json_loads

from sidecar.hub.db import Conn

MIGRATION_VERSION = 17  # the number: unlikely to meet another branch's next migration
MIGRATION = """
CREATE TABLE monitor_state (
    monitor text NOT NULL,
    shard text NOT NULL,
    version bigint NOT NULL,
    offsets jsonb NOT NULL,
    state jsonb NOT NULL,
    meta jsonb NOT NULL,
    resume bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (monitor, shard)
);
"""


class StaleShard(Exception):
    """Another monitor wrote this shard since this one loaded it."""


def load(
    conn: Conn, monitor: str, shard: str
) -> tuple[int, dict[str, Any], dict[str, Any], dict[str, Any], bytes] | None:
    """(version, offsets, state, meta, resume) of one shard, or None."""
    row = conn.execute(
        "SELECT version, offsets, state, meta, resume FROM monitor_state"
        " WHERE monitor = %s AND shard = %s",
        (monitor, shard),
    ).fetchone()
    if row is None:
        return None
    return int(row[0]), row[1], row[2], row[3], bytes(row[4])


def save(
    conn: Conn,
    monitor: str,
    rows: list[tuple[str, int | None, dict[str, Any], dict[str, Any], dict[str, Any], bytes]],
) -> None:
    """Write (shard, version loaded or None, offsets, state, meta, resume) rows in one transaction."""
    with conn.transaction():
        for shard, loaded, offsets, state, meta, resume in rows:
            if loaded is None:
                cur = conn.execute(
                    "INSERT INTO monitor_state (monitor, shard, version, offsets, state, meta, resume)"
                    " VALUES (%s, %s, 1, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (monitor, shard, Jsonb(offsets), Jsonb(state), Jsonb(meta), resume),
                )
            else:
                cur = conn.execute(
                    "UPDATE monitor_state SET version = version + 1, offsets = %s, state = %s,"
                    " meta = %s, resume = %s, updated_at = now()"
                    " WHERE monitor = %s AND shard = %s AND version = %s",
                    (Jsonb(offsets), Jsonb(state), Jsonb(meta), resume, monitor, shard, loaded),
                )
            if cur.rowcount != 1:
                raise StaleShard(
                    f"monitor shard {shard} of {monitor!r} was written by another monitor since"
                    " this one loaded it: two instances take the same shard (check monitor.instance"
                    " and monitor.instances)"
                )


def states(conn: Conn, monitor: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(shard, state, meta) of every shard of the monitor group."""
    cur = conn.cursor()
    # The standard library's JSON, whatever the connection reads jsonb with: the sums are
    # exact big integers, which orjson (the hub API pool's reader) turns into floats.
    set_json_loads(json.loads, cur)
    rows = cur.execute(
        "SELECT shard, state, meta FROM monitor_state WHERE monitor = %s ORDER BY shard",
        (monitor,),
    ).fetchall()
    return [(str(r[0]), r[1], r[2]) for r in rows]
