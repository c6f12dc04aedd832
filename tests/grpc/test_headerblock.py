"""The tap's HPACK: the mirror decoder agrees with the `hpack` package's encoder, table and all;
what the tap encodes, the `hpack` package's decoder reads; every decoder limit holds."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder as RefDecoder
from hpack import Encoder as RefEncoder
from hpack import NeverIndexedHeaderTuple

from sidecar.dataplane.grpc.headerblock import (
    CompressionError,
    Decoder,
    Encoder,
    HeaderListTooLarge,
)
from sidecar.dataplane.grpc.tap import format_timeout, parse_timeout


def _lists(n: int) -> list[list[tuple[bytes, bytes]]]:
    rng = random.Random(3)
    out = []
    for i in range(n):
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
            (b":authority", b"127.0.0.1:8090"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", f"{rng.randint(1, 10**7)}u".encode()),
            (b"x-request-id", f"req-{i % 7}".encode()),
        ]
        if i % 3 == 0:
            headers.append(
                (b"x-big", bytes(rng.randrange(256) for _ in range(rng.randint(0, 900))))
            )
        out.append(headers)
    return out


@pytest.mark.parametrize("table_size", [4096, 256, 0, 65536])
def test_the_mirror_decodes_what_a_real_encoder_sends_table_evictions_included(
    table_size: int,
) -> None:
    ref = RefEncoder()
    ref.header_table_size = table_size
    mirror = Decoder(65536, 1 << 20)
    for headers in _lists(300):
        assert list(mirror.decode(ref.encode(headers, huffman=True))) == headers
        # The same list again: now (mostly) indexed, and a cache hit once it changes nothing.
        for _ in range(2):
            assert list(mirror.decode(ref.encode(headers, huffman=True))) == headers


def test_what_the_tap_encodes_a_real_decoder_reads_and_its_table_stays_empty() -> None:
    enc = Encoder()
    ref = RefDecoder()
    for headers in _lists(100):
        got = ref.decode(enc.encode(headers), raw=True)
        assert [(bytes(k), bytes(v)) for k, v in got] == headers
    assert len(ref.header_table.dynamic_entries) == 0


def test_never_indexed_fields_stay_never_indexed() -> None:
    ref = RefEncoder()
    mirror = Decoder(4096, 1 << 20)
    block = ref.encode([NeverIndexedHeaderTuple(b"authorization", b"s3cret")])
    headers = mirror.decode(block)
    assert headers == ((b"authorization", b"s3cret"),)
    out = Encoder().encode(headers, mirror.never)
    # 0001xxxx: literal never indexed (RFC 7541 §6.2.3), after the tap's table-size update.
    assert out[0] == 0x20 and out[1] & 0xF0 == 0x10
    (field,) = RefDecoder().decode(out, raw=True)
    assert isinstance(field, NeverIndexedHeaderTuple)


def test_a_list_past_the_limit_is_refused_but_the_table_stays_in_step() -> None:
    ref = RefEncoder()
    mirror = Decoder(4096, 200)
    big = [(b"x-a", b"a" * 150), (b"x-b", b"b" * 150)]
    with pytest.raises(HeaderListTooLarge):
        mirror.decode(ref.encode(big))
    # The next block refers to what the refused one inserted: still decoded right.
    assert list(mirror.decode(ref.encode([big[0]]))) == [big[0]]


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"\xbf", "index 63 past an empty table"),
        (b"\x80", "index 0"),
        (b"\x40\x05abc", "string past the end"),
        (b"\x3f\xe1\xff\x03", "table size past the limit"),
        (b"\xff\xff\xff\xff\xff\xff\x7f", "integer too large"),
        (b"\x40\x83\xff\xff\xff\x01a", "bad Huffman"),
    ],
)
def test_blocks_no_peer_could_decode_are_compression_errors(block: bytes, why: str) -> None:
    with pytest.raises(CompressionError):
        Decoder(4096, 1 << 20).decode(block)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"5S", 5.0),
        (b"100m", 0.1),
        (b"2H", 7200.0),
        (b"1M", 60.0),
        (b"250u", 250e-6),
        (b"7n", 7e-9),
    ],
)
def test_grpc_timeout_values_read_and_written(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)
    written = format_timeout(seconds)
    got = parse_timeout(written)
    # Rounded up, never less than asked, at most 8 digits.
    assert got is not None and seconds <= got <= seconds * 1.01 + 2e-6
    assert len(written) <= 9


@pytest.mark.parametrize("value", [b"", b"5", b"S", b"5X", b"123456789S", b"-1S"])
def test_malformed_grpc_timeouts_are_dropped(value: bytes) -> None:
    assert parse_timeout(value) is None
