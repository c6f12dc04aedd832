"""HTTP/2 frames as the tap reads and writes them (RFC 9113 §4, §6): header, types, builders.

Only what a pass-through needs: the 9-byte header, and the few frames the tap
writes itself (header blocks re-encoded, RST_STREAM, WINDOW_UPDATE, GOAWAY,
SETTINGS and PING acks when it answers alone).
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (§7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# SETTINGS parameters (§6.5.2).
HEADER_TABLE_SIZE = 0x1
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5

# The largest frame every peer must take (§4.2): header blocks the tap writes are split by it.
MIN_MAX_FRAME_SIZE = 16_384

# length (24 bits as 16 + 8), type, flags, stream id (the reserved bit masked by the reader).
HEAD = struct.Struct(">HBBBL")
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")


def head(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return HEAD.pack(length >> 8, length & 0xFF, ftype, flags, stream_id)


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return head(len(payload), ftype, flags, stream_id) + payload


def header_block(stream_id: int, block: bytes, end_stream: bool) -> bytes:
    """HEADERS (+ CONTINUATION) carrying `block`, split at the size every peer takes."""
    flags = END_STREAM if end_stream else 0
    size = MIN_MAX_FRAME_SIZE
    if len(block) <= size:
        return head(len(block), HEADERS, flags | END_HEADERS, stream_id) + block
    parts = [frame(HEADERS, flags, stream_id, block[:size])]
    for i in range(size, len(block), size):
        last = i + size >= len(block)
        parts.append(
            frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[i : i + size])
        )
    return b"".join(parts)


def data_frames(stream_id: int, payload: bytes, end_stream: bool) -> bytes:
    size = MIN_MAX_FRAME_SIZE
    if not payload:
        return frame(DATA, END_STREAM if end_stream else 0, stream_id)
    parts = []
    for i in range(0, len(payload), size):
        last = i + size >= len(payload)
        flags = END_STREAM if last and end_stream else 0
        parts.append(frame(DATA, flags, stream_id, payload[i : i + size]))
    return b"".join(parts)


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + debug)


def settings(params: list[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in params))


def read_settings(payload: bytes) -> list[tuple[int, int]]:
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload) - 5, 6)]


def u32(payload: bytes, offset: int = 0) -> int:
    value: int = _U32.unpack_from(payload, offset)[0]
    return value


def strip_padding(flags: int, payload: bytes) -> bytes | None:
    """A DATA or HEADERS payload without its padding (None: padding longer than the frame)."""
    if not flags & PADDED:
        return payload
    if not payload:
        return None
    pad = payload[0]
    if pad >= len(payload):
        return None
    return payload[1 : len(payload) - pad]
