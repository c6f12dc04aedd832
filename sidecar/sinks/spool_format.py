"""The spool's bytes on disk: segment names and headers, records, the checkpoint.

Format version 1. A segment is named by the sequence number of its first record
(`00000000000000000042.seg`) and starts with a 24-byte header `<8sHHQI` (magic
`SCSPOOL1`, format version, reserved zero, first seq, CRC-32 of the 20 bytes
before it); the checkpoint `acked` is JSON `{"version", "seq", "segment", "offset"}`.
Every version keeps the magic and the version in a segment's first 10 bytes
and `version` in the checkpoint, so a sidecar refuses, at start and naming the
file, a spool of a version it does not read rather than misread it. Segments
of the previous release (no header: the file starts with a valid record whose
seq is the file's name) are read as they are; a checkpoint without `version`
is theirs.

Record: an 18-byte header `<HIIQ` (magic, payload length, CRC-32 of
length+seq+payload, seq) and a payload `<BHBB` (kind, key, event id and time
lengths) followed by key, event id, time and the JSON body. A torn or corrupt
stretch is found by scanning for the next valid header; a damaged segment
header is such a stretch.

This module only encodes, parses and classifies bytes; the `Spool` in
`spool.py` owns the files, the locking and what is counted and logged.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

MAGIC = 0x5350  # "PS" little-endian; resync looks for these two bytes
HEADER = struct.Struct("<HIIQ")  # magic, crc32 of everything after it, payload length, seq
PAYLOAD = struct.Struct("<BHBB")  # kind, key length, event id length, time length
_TAIL = struct.Struct("<IQBHBB")  # what the crc covers first: length, seq, payload's fixed part
_FULL = struct.Struct("<HIIQBHBB")
_CRC_FROM = 6  # the crc covers bytes [6, end) of a record
MAX_PAYLOAD = 16 * 1024 * 1024
# Appended only: a kind's code is its place here, written in every record.
KINDS = ("decision", "explanation", "review", "gap", "outcome")
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}
SUFFIX = ".seg"
CHECKPOINT = "acked"
MAGIC_BYTES = struct.pack("<H", MAGIC)
FORMAT_VERSION = 1
# Never starts with the record magic's b"PS": a header and a previous release's first record differ.
SEGMENT_MAGIC = b"SCSPOOL1"
SEGMENT_HEADER = struct.Struct("<8sHHQI")  # magic, version, reserved, first seq, crc32 of the rest
_VERSION_END = 10  # magic and version: the part of the header every version keeps

SegmentKind = Literal["current", "legacy", "empty", "damaged"]


@dataclass(slots=True, frozen=True)
class Position:
    """Where a record starts: segment (its first seq) and byte offset."""

    segment: int
    offset: int


@dataclass(slots=True)
class Record:
    seq: int
    kind: str
    key: str
    event_id: str
    time: str
    body: bytes
    pos: Position
    replay: bool  # written by an earlier run of the process
    end: int  # where the next record starts, in the buffer it was parsed from


_NOWHERE = Position(-1, -1)


class SpoolError(RuntimeError):
    """The spool cannot be opened; the message names the directory or file and what to do."""


class SpoolFormatError(SpoolError):
    """A segment or the checkpoint is of a format version this sidecar does not read."""


def _refuse(path: Path, found: object) -> SpoolFormatError:
    return SpoolFormatError(
        f"spool file {path} has format version {found}; this sidecar reads version "
        f"{FORMAT_VERSION} and refuses to guess. Run the sidecar version that wrote it until "
        "the spool drains, or point spool.directory at another directory"
    )


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def segment_header(first_seq: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, first_seq, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


# -- records ---------------------------------------------------------------


def encode(seq: int, kind: str, key: str, event_id: str, time_: str, body: bytes) -> bytes:
    k, e, t = key.encode(), event_id.encode(), time_.encode()
    if len(k) > 0xFFFF or len(e) > 0xFF or len(t) > 0xFF:
        raise ValueError("key, event id or time too long for a spool record")
    n = PAYLOAD.size + len(k) + len(e) + len(t) + len(body)
    if n > MAX_PAYLOAD:
        raise ValueError(f"event of {n} bytes is larger than the spool's record limit")
    rest = b"".join((_TAIL.pack(n, seq, _KIND_CODE[kind], len(k), len(e), len(t)), k, e, t, body))
    return struct.pack("<HI", MAGIC, zlib.crc32(rest)) + rest


def parse_at(buf: bytes, off: int) -> Record | None:
    """The valid record at `off` in `buf` (position not yet set), else None."""
    if off + _FULL.size > len(buf):
        return None
    magic, crc, n, seq, code, kl, el, tl = _FULL.unpack_from(buf, off)
    end = off + HEADER.size + n
    if (
        magic != MAGIC
        or n > MAX_PAYLOAD
        or n < PAYLOAD.size + kl + el + tl
        or end > len(buf)
        or code >= len(KINDS)
        or zlib.crc32(memoryview(buf)[off + _CRC_FROM : end]) != crc
    ):
        return None
    i = off + _FULL.size
    key = buf[i : i + kl].decode()
    i += kl
    eid = buf[i : i + el].decode()
    i += el
    t = buf[i : i + tl].decode()
    return Record(seq, KINDS[code], key, eid, t, buf[i + tl : end], _NOWHERE, False, end)


def needed(buf: bytes, off: int) -> int | None:
    """Bytes a plausible record at `off` needs when `buf` ends before it does, else None."""
    if off + HEADER.size > len(buf):
        return HEADER.size if buf[off : off + 2] == MAGIC_BYTES[: len(buf) - off] else None
    magic, _, n, _ = HEADER.unpack_from(buf, off)
    n = int(n)
    if magic != MAGIC or n > MAX_PAYLOAD or off + HEADER.size + n <= len(buf):
        return None
    return HEADER.size + n


def resync(buf: bytes, off: int) -> int | None:
    """Bytes to skip from `off` to the next valid record; None if none follows."""
    i = buf.find(MAGIC_BYTES, off + 1)
    while i != -1:
        if parse_at(buf, i) is not None:
            return i - off
        i = buf.find(MAGIC_BYTES, i + 1)
    return None


# -- segments --------------------------------------------------------------


def read_head(path: Path) -> bytes:
    """A segment's first bytes: its header, or the whole first record of a headerless one."""
    with open(path, "rb") as f:
        buf = f.read(SEGMENT_HEADER.size)
        need = needed(buf, 0)
        if need is not None:
            buf += f.read(need - len(buf))
    return buf


def classify(path: Path, head: bytes) -> tuple[SegmentKind, int]:
    """What a segment is, from its first bytes, and where its records start.

    Raises SpoolFormatError for a segment of another format version.
    """
    first = int(path.name[: -len(SUFFIX)])
    if head[: len(SEGMENT_MAGIC)] == SEGMENT_MAGIC and len(head) >= _VERSION_END:
        version = int.from_bytes(head[len(SEGMENT_MAGIC) : _VERSION_END], "little")
        if version != FORMAT_VERSION:
            # A flipped bit here also lands in this branch: refusing is the safe side of
            # that doubt, since records of another format would be skipped as corrupt and lost.
            raise _refuse(path, version)
    if len(head) >= SEGMENT_HEADER.size:
        magic, _, _, seq, crc = SEGMENT_HEADER.unpack_from(head)
        if (
            magic == SEGMENT_MAGIC
            and seq == first
            and crc == zlib.crc32(head[: SEGMENT_HEADER.size - 4])
        ):
            return "current", SEGMENT_HEADER.size
    if not head:
        return "empty", 0  # a crash between creating the file and writing its header
    rec = parse_at(head, 0)
    if rec is not None and rec.seq == first:
        return "legacy", 0
    # Its records are still found by scanning, as past any corrupt stretch.
    return "damaged", 0


def scan(directory: Path) -> list[Record]:
    """Every valid record in a spool directory, oldest first, without opening it (tools, tests)."""
    out: list[Record] = []
    for path in sorted(Path(directory).glob("*" + SUFFIX)):
        if not path.name[: -len(SUFFIX)].isdigit():
            continue
        buf = path.read_bytes()
        off = classify(path, buf)[1]
        while off < len(buf):
            rec = parse_at(buf, off)
            if rec is None:
                i = buf.find(MAGIC_BYTES, off + 1)
                off = len(buf) if i == -1 else i
                continue
            rec.pos = Position(int(path.name[: -len(SUFFIX)]), off)
            out.append(rec)
            off = rec.end
    return out


# -- the checkpoint ----------------------------------------------------------


def checkpoint_bytes(seq: int, pos: Position) -> bytes:
    """The checkpoint naming `seq` as the first unacknowledged record, starting at `pos`."""
    return orjson.dumps(
        {"version": FORMAT_VERSION, "seq": seq, "segment": pos.segment, "offset": pos.offset}
    )


def parse_checkpoint(path: Path, data: bytes) -> tuple[int, Position]:
    """(first unacknowledged seq, where it starts) from the checkpoint file `path` holding `data`.

    Raises SpoolFormatError for another format version; ValueError, KeyError or
    TypeError (orjson.JSONDecodeError is a ValueError) for an unreadable one.
    """
    raw = orjson.loads(data)
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    version = raw.get("version")  # absent: written before versions, same fields
    if version is not None:
        if type(version) is not int:
            raise TypeError("version is not a number")
        if version != FORMAT_VERSION:
            raise _refuse(path, version)
    seq, seg, off = int(raw["seq"]), int(raw["segment"]), int(raw["offset"])
    if min(seq, seg, off) < 0:
        raise ValueError("negative")
    return seq, Position(seg, off)
