"""Header rules for a transparent proxy (RFC 9110 section 7.6.1).

Hop-by-hop headers belong to one connection and are never forwarded; the
Connection header may name more of them. Everything else passes unchanged,
in order, duplicates included.
"""

from __future__ import annotations

from sidecar.types import RawHeaders

# Always hop-by-hop, whatever Connection says. `proxy-*` is matched by prefix.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Set by the proxy itself from what it knows, never copied from the client.
_REPLACED_ON_REQUEST: frozenset[bytes] = frozenset({b"x-forwarded-proto", b"content-length"})


def _named_by_connection(headers: RawHeaders) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    named.add(token)
    return frozenset(named)


def _is_hop(name: bytes, named: frozenset[bytes]) -> bool:
    return name in HOP_BY_HOP or name.startswith(b"proxy-") or name in named


def request_headers(
    headers: RawHeaders,
    peer: str | None,
    scheme: str,
    strip: frozenset[bytes] = frozenset(),
    content_length: int | None = None,
) -> list[tuple[str, str]]:
    """Headers to send upstream: end-to-end ones kept, forwarding headers set from the real peer."""
    named = _named_by_connection(headers)
    out: list[tuple[str, str]] = []
    xff: str | None = None
    clen: str | None = None
    for name, value in headers:
        if _is_hop(name, named) or name in strip:
            continue
        if name == b"x-forwarded-for":
            v = value.decode("latin-1")
            xff = v if xff is None else f"{xff}, {v}"
            continue
        if name in _REPLACED_ON_REQUEST:
            if name == b"content-length":
                clen = value.decode("latin-1")
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if peer:
        xff = peer if xff is None else f"{xff}, {peer}"
    if xff is not None:
        out.append(("x-forwarded-for", xff))
    out.append(("x-forwarded-proto", scheme))
    if content_length is not None:
        out.append(("content-length", str(content_length)))
    elif clen is not None:
        out.append(("content-length", clen))
    return out


def response_headers(raw: tuple[tuple[bytes, bytes], ...] | RawHeaders) -> RawHeaders:
    """Upstream response headers to pass back: hop-by-hop removed, names lower-cased for ASGI."""
    lowered = [(n.lower(), v) for n, v in raw]
    named = _named_by_connection(lowered)
    return [(n, v) for n, v in lowered if not _is_hop(n, named)]
