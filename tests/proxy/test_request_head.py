"""The buffered call's one-pass request head against the general header rules (headers.py)."""

from __future__ import annotations

import itertools

import pytest

from sidecar.dataplane.headers import _buffered_drop, _request_head_general, request_head
from sidecar.types import RawHeaders

STRIP = frozenset({b"x-group-attributes"})

# Every kind of header the rules treat apart, alone and in combination.
KINDS: list[RawHeaders] = [
    [(b"host", b"model:8080")],
    [(b"content-type", b"application/json")],
    [(b"content-length", b"12")],
    [(b"x-group-attributes", b"gender=F")],
    [(b"connection", b"keep-alive")],
    [(b"connection", b"Close")],
    [(b"connection", b"keep-alive, x-secret")],
    [(b"connection", b"upgrade, http2-settings"), (b"upgrade", b"h2c")],
    [(b"x-secret", b"s")],
    [(b"keep-alive", b"timeout=5")],
    [(b"te", b"trailers")],
    [(b"proxy-authorization", b"Basic x")],
    [(b"expect", b"100-continue")],
    [(b"x-forwarded-for", b"10.0.0.1")],
    [(b"x-forwarded-for", b"10.0.0.2")],
    [(b"x-forwarded-proto", b"https")],
    [(b"x-custom", b"a"), (b"x-custom", b"b")],
]


def _combinations() -> list[RawHeaders]:
    out = []
    for r in (0, 1, 2, 3):
        for combo in itertools.combinations(range(len(KINDS)), r):
            out.append([h for i in combo for h in KINDS[i]])
    # Order matters where Connection names a header sent before it.
    out.append([(b"x-secret", b"s"), (b"connection", b"x-secret"), (b"host", b"h")])
    return out


@pytest.mark.parametrize("peer", ["10.1.1.1", None])
def test_one_pass_head_equals_the_general_rules(peer: str | None) -> None:
    drop = _buffered_drop(STRIP)
    for headers in _combinations():
        fast = request_head("POST", b"/v2/models/m/infer", headers, peer, "http", STRIP, 7, b"up:1")
        general = _request_head_general(
            "POST", b"/v2/models/m/infer", headers, peer, "http", drop, 7, b"up:1"
        )
        assert fast == general, headers


def test_head_drops_what_a_proxy_must_not_forward() -> None:
    headers: RawHeaders = [
        (b"host", b"h"),
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"s"),
        (b"x-group-attributes", b"gender=F"),
        (b"expect", b"100-continue"),
        (b"content-length", b"99"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]
    head = request_head("POST", b"/p", headers, "127.0.0.1", "http", STRIP, 3, b"up:1")
    assert head == (
        b"POST /p HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"
        b"x-forwarded-proto: http\r\ncontent-length: 3\r\n\r\n"
    )
