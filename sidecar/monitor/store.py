"""Where monitor instances keep their shards' checkpoints, and read each other's to merge.

`FolderStore` (`monitor.state_store = "folder"`, the embedded default): one
file per shard in `monitor.state_dir`, replaced atomically, so a shard's
statistics and its read position are written together; instances share the
folder. Its first line is what a merge reads (state, offsets, meta), its second
what only the owner reads back (the join index), so merging does not parse it.

`DatabaseStore` (`"database"`): one row per shard in the hub's PostgreSQL
(`hub.database_url`, table `monitor_state`), each step's shards in one
transaction; instances share nothing but the database, and the hub serves the
dashboard from the same rows.

Both refuse to overwrite a shard that another writer changed since this one
loaded it (`StaleShard`).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg

from sidecar.hub.db import Conn
from sidecar.hub.monitor_state import StaleShard
from sidecar.monitor.checkpoint import Checkpoint, decode_resume, encode_resume

__all__ = ["DatabaseStore", "FolderStore", "StaleShard", "StateStore", "current_shard"]

T = TypeVar("T")
_SHARD = re.compile(r"^(kafka-p\d+|files-\d+-of-\d+)$")


def current_shard(shard: str, instances: int) -> bool:
    """Whether a stored shard belongs to the present sharding: Kafka partitions always do (a
    partition's state stays its own whatever the instance count); a files-source share only
    under the same `monitor.instances` (a share of 2 does not add up with shares of 3)."""
    if shard.startswith("kafka-p"):
        return True
    return shard.endswith(f"-of-{instances}")


class StateStore(Protocol):
    def load(self, shard: str) -> Checkpoint | None: ...

    def save(self, checkpoints: list[Checkpoint]) -> None: ...

    def states(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]: ...

    def close(self) -> None: ...


class FolderStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._versions: dict[str, int] = {}

    def _path(self, shard: str) -> Path:
        if not _SHARD.match(shard):
            raise ValueError(f"not a shard name: {shard!r}")
        return self.folder / f"{shard}.ckpt"

    @staticmethod
    def _head(path: Path) -> dict[str, Any] | None:
        try:
            with path.open("rb") as f:
                head: dict[str, Any] = json.loads(f.readline())
        except FileNotFoundError:
            return None
        return head

    def load(self, shard: str) -> Checkpoint | None:
        path = self._path(shard)
        try:
            with path.open("rb") as f:
                head = json.loads(f.readline())
                resume = decode_resume(base64.b64decode(f.readline()))
        except FileNotFoundError:
            return None
        self._versions[shard] = int(head["version"])
        return Checkpoint(shard, head["state"], resume, head["offsets"], head["meta"])

    def save(self, checkpoints: list[Checkpoint]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for ck in checkpoints:
            path = self._path(ck.shard)
            head = self._head(path)
            on_disk = None if head is None else int(head["version"])
            if on_disk != self._versions.get(ck.shard):
                raise StaleShard(
                    f"monitor shard {ck.shard} in {self.folder} was written by another monitor"
                    " since this one loaded it: two instances take the same shard (check"
                    " monitor.instance and monitor.instances)"
                )
            version = (on_disk or 0) + 1
            first = {"version": version, "state": ck.state, "offsets": ck.offsets, "meta": ck.meta}
            data = (
                json.dumps(first, separators=(",", ":")).encode()
                + b"\n"
                + base64.b64encode(encode_resume(ck.resume))
                + b"\n"
            )
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # the shard's state and its offsets, at once
            self._versions[ck.shard] = version

    def states(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        out = []
        for path in sorted(self.folder.glob("*.ckpt")) if self.folder.is_dir() else []:
            head = self._head(path)
            if head is not None:
                out.append((path.stem, head["state"], head["meta"]))
        return out

    def close(self) -> None:
        pass


class DatabaseStore:
    def __init__(self, url: str, group: str) -> None:
        from sidecar.hub import schema
        from sidecar.hub.db import connect

        self.group = group
        self._url = url
        try:
            self._conn = connect(url, application_name="sidecar-monitor")
            # The hub's migrations: a monitor that starts before any hub creates the tables.
            schema.migrate(self._conn)
        except psycopg.Error as exc:
            raise ValueError(
                f"config key 'hub.database_url': cannot use the database: {exc}"
            ) from None
        self._versions: dict[str, int] = {}

    def _call(self, fn: Callable[[Conn], T]) -> T:
        """`fn` on the connection; once more on a new one when the old one turns out dead (a
        database restarted under a long-running monitor). A write that failed on a dead
        connection was not committed (one whose commit was lost finds its version moved on:
        StaleShard, never a double count)."""
        from sidecar.hub.db import connect

        if self._conn.closed or self._conn.broken:
            self._conn = connect(self._url, application_name="sidecar-monitor")
        try:
            return fn(self._conn)
        except psycopg.OperationalError:
            if not self._conn.broken:
                raise
        self._conn = connect(self._url, application_name="sidecar-monitor")
        return fn(self._conn)

    def load(self, shard: str) -> Checkpoint | None:
        from sidecar.hub import monitor_state

        row = self._call(lambda conn: monitor_state.load(conn, self.group, shard))
        if row is None:
            return None
        version, offsets, state, meta, resume = row
        self._versions[shard] = version
        return Checkpoint(shard, state, decode_resume(resume), offsets, meta)

    def save(self, checkpoints: list[Checkpoint]) -> None:
        from sidecar.hub import monitor_state

        rows = [
            (
                ck.shard,
                self._versions.get(ck.shard),
                ck.offsets,
                ck.state,
                ck.meta,
                encode_resume(ck.resume),
            )
            for ck in checkpoints
        ]
        self._call(lambda conn: monitor_state.save(conn, self.group, rows))
        for ck in checkpoints:
            self._versions[ck.shard] = self._versions.get(ck.shard, 0) + 1

    def states(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        from sidecar.hub import monitor_state

        return self._call(lambda conn: monitor_state.states(conn, self.group))

    def close(self) -> None:
        self._conn.close()
