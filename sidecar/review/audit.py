"""The audit trail: an append-only, hash-chained record of review actions.

Record n stores `hash_n = SHA-256(hash_{n-1} || "\\n" || canonical(record_n))`
where canonical is sorted-key, whitespace-free JSON of the record's fields
(seq included, so records cannot be reordered without breaking the chain).
An edit breaks the record's own hash, a deletion or a reorder breaks the
link to its predecessor, and a truncation is caught against a head hash the
operator kept. The chain lives in the review store's SQLite database and is
written in the same transaction as the state change it records.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.priority import paced

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    item_id TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_item ON audit(item_id);
"""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    time: float
    item_id: str
    decision_id: str
    action: str
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "item_id": self.item_id,
            "decision_id": self.decision_id,
            "action": self.action,
            "actor": self.actor,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


# json.dumps with any non-default option builds an encoder per call, and `audit verify`
# hashes every record beside the proxy: the head is written here as json.dumps writes it
# (ints and floats by repr, strings by json's own escaper; a test holds the two
# byte-equal), the data by one encoder built once. 15 against 20 us a record here.
_DATA = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_string = json.encoder.encode_basestring  # the escaper json.dumps uses with ensure_ascii=False


def canonical(
    seq: int, time: float, item_id: str, decision_id: str, action: str, actor: str, data_json: str
) -> bytes:
    """The bytes a record's hash covers (data is already canonical JSON)."""
    # float(): verify reads the time back from a REAL column, so an int time hashes as it will.
    t = float(time)
    if not math.isfinite(t):
        raise ValueError(f"Out of range float values are not JSON compliant: {time!r}")
    return (
        f"[{int(seq)!r},{t!r},{_string(item_id)},{_string(decision_id)},"
        f"{_string(action)},{_string(actor)},{data_json}]"
    ).encode()


def canonical_data(data: dict[str, Any]) -> str:
    return _DATA.encode(data)


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(seq, hash) of the newest record; (0, GENESIS) for an empty chain."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


def append(
    conn: sqlite3.Connection,
    *,
    time: float,
    item_id: str,
    decision_id: str,
    action: str,
    actor: str,
    data: dict[str, Any],
) -> AuditRecord:
    """Append one record; the caller holds the write transaction."""
    rec, row = next_record(head(conn), time, item_id, decision_id, action, actor, data)
    conn.execute(INSERT, row)
    return rec


def next_record(
    prev: tuple[int, str],
    time: float,
    item_id: str,
    decision_id: str,
    action: str,
    actor: str,
    data: dict[str, Any],
) -> tuple[AuditRecord, tuple[Any, ...]]:
    """The record that follows the head `prev` (seq, hash), and its row as `AUDIT_COLUMNS`
    stores it: how every store (SQLite here, PostgreSQL at the hub) extends the chain."""
    prev_seq, prev_hash = prev
    seq = prev_seq + 1
    data_json = canonical_data(data)
    digest = chain_hash(
        prev_hash, canonical(seq, time, item_id, decision_id, action, actor, data_json)
    )
    row = (seq, time, item_id, decision_id, action, actor, data_json, prev_hash, digest)
    return AuditRecord(seq, time, item_id, decision_id, action, actor, data, prev_hash, digest), row


AUDIT_COLUMNS = "seq, time, item_id, decision_id, action, actor, data, prev_hash, hash"
# One record's row, as `next_record` returns it, into SQLite.
INSERT = f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def record_of_row(row: tuple[Any, ...]) -> AuditRecord:
    """An AuditRecord from a row selected as `AUDIT_COLUMNS` (SQLite here, PostgreSQL at the hub)."""
    return AuditRecord(
        int(row[0]),
        float(row[1]),
        row[2],
        row[3],
        row[4],
        row[5],
        json.loads(row[6]),
        row[7],
        row[8],
    )


def records(
    conn: sqlite3.Connection, *, after: int = 0, limit: int = 100, item_id: str | None = None
) -> list[AuditRecord]:
    if item_id is None:
        cur = conn.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
    else:
        cur = conn.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE item_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (item_id, after, limit),
        )
    return [record_of_row(r) for r in cur.fetchall()]


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    error: str | None = None
    bad_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "count": self.count,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "error": self.error,
            "bad_seq": self.bad_seq,
        }


def _raw_rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    # seq is the rowid, so this is stored order; seq is inside each hash, so a record moved
    # to another seq no longer matches its hash.
    yield from conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")


def _where(seq: Any, count: int) -> str:
    return f"record seq={seq} (position {count + 1})"


def verify_rows(rows: Iterable[tuple[Any, ...]], expected_head: str | None = None) -> VerifyResult:
    """Walk the chain from genesis; report the first record that does not hold."""
    prev_hash = GENESIS
    expected_seq = 1
    count = 0
    head_seen = expected_head is None or expected_head == GENESIS
    for row in rows:
        seq, time, item_id, decision_id, action, actor, data_json, stored_prev, stored_hash = row
        if seq != expected_seq:
            return VerifyResult(
                False,
                count,
                expected_seq - 1,
                prev_hash,
                f"{_where(seq, count)}: expected seq {expected_seq}; a record was deleted or moved here",
                seq,
            )
        if stored_prev != prev_hash:
            return VerifyResult(
                False,
                count,
                seq - 1,
                prev_hash,
                f"{_where(seq, count)}: its previous-hash does not match record {seq - 1}'s hash;"
                " a record before it was deleted, edited or reordered",
                seq,
            )
        try:
            # The data is hashed as stored: every store keeps the canonical text it hashed
            # (`next_record`), so any other text, equal JSON or not, is an edit (and a blob
            # read as str() never matches). Parsing and re-encoding it was 40% of a
            # record's CPU, spent beside a serving proxy.
            body = canonical(
                int(seq),
                float(time),
                str(item_id),
                str(decision_id),
                str(action),
                str(actor),
                str(data_json),
            )
        except (TypeError, ValueError) as exc:
            return VerifyResult(
                False,
                count,
                seq - 1,
                prev_hash,
                f"{_where(seq, count)}: unreadable ({exc}); it was edited",
                seq,
            )
        if chain_hash(prev_hash, body) != stored_hash:
            return VerifyResult(
                False,
                count,
                seq - 1,
                prev_hash,
                f"{_where(seq, count)}: its contents do not match its hash; the record was edited",
                seq,
            )
        prev_hash = stored_hash
        expected_seq += 1
        count += 1
        if not head_seen and stored_hash == expected_head:
            head_seen = True
    if not head_seen:
        return VerifyResult(
            False,
            count,
            count,
            prev_hash,
            f"the kept head {expected_head} is not in the chain ({count} records, head {prev_hash});"
            " records after the current head were removed (truncated) or the head is wrong",
            count + 1,
        )
    return VerifyResult(True, count, count, prev_hash)


def verify(
    conn: sqlite3.Connection, expected_head: str | None = None, per_s: float = 0
) -> VerifyResult:
    """`verify_rows` over the database's chain, at most `per_s` records a second (0: no
    limit; `sidecar.priority.paced`)."""
    return verify_rows(paced(_raw_rows(conn), per_s), expected_head)
