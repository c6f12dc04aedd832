"""Database connections of the hub: psycopg 3, autocommit outside explicit transactions."""

from __future__ import annotations

from typing import TypeAlias

import orjson
import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

Conn: TypeAlias = psycopg.Connection[TupleRow]
AsyncConn: TypeAlias = psycopg.AsyncConnection[TupleRow]


def connect(url: str, *, application_name: str = "sidecar-hub") -> Conn:
    """One connection; `with conn.transaction():` opens each transaction explicitly."""
    return psycopg.connect(url, autocommit=True, application_name=application_name)


def _configure(conn: Conn) -> None:
    # jsonb read back (review items' explanations and outcomes, review events) with orjson:
    # psycopg's default is the standard library's json, several times slower on an
    # explanation. Decision and explanation bodies are text, parsed by their readers.
    set_json_loads(orjson.loads, conn)


async def _configure_async(conn: AsyncConn) -> None:
    set_json_loads(orjson.loads, conn)


def pool(url: str, size: int) -> ConnectionPool[Conn]:
    """The API's connections: opened at start, so a bad URL stops the start."""
    p: ConnectionPool[Conn] = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "application_name": "sidecar-hub-api"},
        open=False,
        name="hub-api",
        configure=_configure,
    )
    p.open(wait=True, timeout=30.0)
    return p


def async_pool(url: str, size: int) -> AsyncConnectionPool[AsyncConn]:
    """The lookup's connections, used on the API's event loop (`sidecar.hub.lookup_fast`):
    a statement awaited there costs no hand-off to a worker thread and back. Not opened here:
    its tasks belong to the loop that opens it (the app's lifespan does)."""
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "application_name": "sidecar-hub-lookup"},
        open=False,
        name="hub-lookup",
        configure=_configure_async,
    )
