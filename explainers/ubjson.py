"""A bounded Universal Binary JSON reader, for XGBoost's ``.ubj`` model files.

XGBoost's own reader trusts the counts a file declares: a truncated file made it grow to
about 23 GB. Here every declared count and length is checked against the bytes that are
left before anything is allocated, nesting is bounded, and every fault is a
ModelLoadError naming the byte offset. Typed numeric arrays (how XGBoost writes a tree's
node arrays) become numpy arrays in one copy.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from explainers.errors import ModelLoadError

MAX_NESTING = 64

# marker -> (big-endian numpy dtype, item size, struct format)
_TYPES = {
    "i": (">i1", 1, ">b"),
    "U": (">u1", 1, ">B"),
    "I": (">i2", 2, ">h"),
    "l": (">i4", 4, ">i"),
    "L": (">i8", 8, ">q"),
    "d": (">f4", 4, ">f"),
    "D": (">f8", 8, ">d"),
}
_NUMBERS = {ord(m): (dt, size) for m, (dt, size, _) in _TYPES.items()}
_STRUCTS = {ord(m): struct.Struct(fmt) for m, (_, _, fmt) in _TYPES.items()}
_INT_MARKERS = (ord("i"), ord("U"), ord("I"), ord("l"), ord("L"))


def loads(data: bytes) -> Any:
    """The one value ``data`` holds; refuses truncation, trailing bytes and absurd sizes."""
    reader = _Reader(data)
    value = reader.value(reader.marker(), 0)
    if reader.pos != len(data):
        raise reader.error(f"{len(data) - reader.pos} bytes after the end of the document")
    return value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def error(self, what: str, at: int | None = None) -> ModelLoadError:
        return ModelLoadError(f"XGBoost UBJ, byte {self.pos if at is None else at}: {what}")

    def take(self, n: int) -> int:
        """Reserve n bytes; the start offset."""
        start = self.pos
        if n > len(self.data) - start:
            raise self.error(f"truncated: {n} bytes needed, {len(self.data) - start} left")
        self.pos = start + n
        return start

    def marker(self) -> int:
        m = self.data[self.take(1)]
        while m == ord("N"):  # no-op padding
            m = self.data[self.take(1)]
        return m

    def number(self, m: int) -> int | float:
        fmt = _STRUCTS[m]
        v: int | float = fmt.unpack_from(self.data, self.take(fmt.size))[0]
        return v

    def count(self, m: int | None = None) -> int:
        at = self.pos
        m = self.marker() if m is None else m
        if m not in _INT_MARKERS:
            raise self.error(f"a length must be an integer, not {chr(m)!r}", at)
        n = int(self.number(m))
        if n < 0:
            raise self.error(f"negative length {n}", at)
        return n

    def text(self) -> str:
        n = self.count()
        left = len(self.data) - self.pos
        if n > left:
            raise self.error(f"truncated: a string of {n} bytes, {left} left")
        start = self.take(n)
        try:
            return self.data[start : start + n].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"a string is not UTF-8 ({exc.reason})", start + exc.start) from None

    def value(self, m: int, depth: int) -> Any:
        if m in _STRUCTS:
            return self.number(m)
        if m == ord("S"):
            return self.text()
        if m == ord("H"):  # high-precision number, written as its decimal text
            at = self.pos
            s = self.text()
            try:
                return float(s) if any(c in s for c in ".eE") else int(s)
            except ValueError:
                raise self.error(f"bad high-precision number {s[:20]!r}", at) from None
        if m == ord("C"):
            return chr(self.data[self.take(1)])
        if m == ord("T"):
            return True
        if m == ord("F"):
            return False
        if m == ord("Z"):
            return None
        if m in (ord("["), ord("{")):
            if depth >= MAX_NESTING:
                raise self.error(f"nested deeper than {MAX_NESTING} levels")
            return self.array(depth + 1) if m == ord("[") else self.obj(depth + 1)
        raise self.error(f"unknown marker {m:#04x}", self.pos - 1)

    def header(self) -> tuple[int | None, int | None]:
        """An optimised container's $type and #count, as far as it declares them."""
        kind = None
        if self.data[self.pos : self.pos + 1] == b"$":
            self.take(1)
            kind = self.data[self.take(1)]
            if self.data[self.pos : self.pos + 1] != b"#":
                raise self.error("a typed container must declare its count")
        n = None
        if self.data[self.pos : self.pos + 1] == b"#":
            self.take(1)
            n = self.count()
        return kind, n

    def array(self, depth: int) -> Any:
        kind, n = self.header()
        if n is None:
            items = []
            while (m := self.marker()) != ord("]"):
                items.append(self.value(m, depth))
            return items
        if kind in _NUMBERS:
            dt, size = _NUMBERS[kind]
            left = len(self.data) - self.pos
            if n > left // size:
                raise self.error(f"truncated: {n} items of {size} bytes declared, {left} left")
            start = self.take(n * size)
            return np.frombuffer(self.data, dtype=dt, count=n, offset=start).astype(dt[1:])
        self.fits(n, 0 if kind in (ord("T"), ord("F"), ord("Z")) else 1)
        if kind is not None:
            return [self.value(kind, depth) for _ in range(n)]
        return [self.value(self.marker(), depth) for _ in range(n)]

    def obj(self, depth: int) -> dict[str, Any]:
        kind, n = self.header()
        out: dict[str, Any] = {}
        if n is None:
            while self.data[self.pos : self.pos + 1] != b"}":
                key = self.text()
                out[key] = self.value(self.marker(), depth)
            self.take(1)
            return out
        self.fits(n, 2)  # a key is at least a length marker and a length
        for _ in range(n):
            key = self.text()
            out[key] = self.value(self.marker() if kind is None else kind, depth)
        return out

    def fits(self, n: int, min_item_bytes: int) -> None:
        left = len(self.data) - self.pos
        if min_item_bytes and n > left // min_item_bytes:
            raise self.error(f"truncated: {n} items declared, {left} bytes left")
        if not min_item_bytes and n > 1 << 24:
            raise self.error(f"{n} items declared without data")
