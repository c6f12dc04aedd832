"""Group (protected) attributes: read from a request, derived from features, made private.

Sources, later ones overriding earlier ones for the same name: attributes
derived from the row's features (`groups.derive`), the request body's field
(V2 `parameters.<groups.body_field>`, `group_attributes` by default), and the
`x-group-attributes` header (`gender=F; age_band=30-39`). Malformed parts are
ignored and counted, never fatal. The privacy policy (keep, keyed hash, drop)
is applied before the attributes go anywhere: `from_request` returns them
already private.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.config import GroupSettings
from sidecar.metrics import Registry

HASH_PREFIX = "hmac-sha256:"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}\Z")

Headers = dict[bytes, bytes] | Sequence[tuple[bytes, bytes]]
# Header values remembered after parsing: a bound, and no caching of outsized values.
_HEADER_CACHE = 1024
_CACHED_HEADER_BYTES = 512
# Levels of objects flattened into dotted names; deeper parts are ignored and counted.
_MAX_NESTING = 4


class _Rule:
    __slots__ = ("bins", "feature", "labels", "map")

    def __init__(self, rule: GroupSettings.Derive) -> None:
        self.feature = rule.feature
        self.bins = list(rule.bins)
        self.map = dict(rule.map)
        if rule.labels:
            self.labels = list(rule.labels)
        else:
            self.labels = [
                f"{_num(lo)}-{_num(hi)}" for lo, hi in zip(self.bins, self.bins[1:], strict=False)
            ]
            if self.bins:
                self.labels.append(f"{_num(self.bins[-1])}+")

    def apply(self, value: Any) -> str | None:
        if self.bins:
            if isinstance(value, bool) or not isinstance(value, int | float):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    return None
            if value != value:  # NaN has no band
                return None
            i = bisect.bisect_right(self.bins, value) - 1
            return f"<{_num(self.bins[0])}" if i < 0 else self.labels[i]
        text = _text(value)
        return self.map.get(text, text)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class GroupExtractor:
    """Built once from `settings.groups`; `from_request` runs on the hot path (a few µs)."""

    def __init__(self, settings: GroupSettings, registry: Registry) -> None:
        self.header_name = settings.header.encode()
        self.body_field: str | None = settings.body_field or None
        self._derive = {name: _Rule(rule) for name, rule in settings.derive.items()}
        self._allowed = frozenset(settings.allowed) or None
        self._max = settings.max_attributes
        self._max_value = settings.max_value_chars
        self._policy = dict(settings.privacy)
        self._default = settings.default_privacy
        key = settings.hash_key.get_secret_value().encode() if settings.hash_key else b""
        self._hmac = hmac.new(key, digestmod=hashlib.sha256) if key else None
        self._needs_privacy = self._default != "keep" or any(
            v != "keep" for v in self._policy.values()
        )
        self._header_cache: dict[bytes, tuple[dict[str, str], int, int]] = {}
        self.m_malformed = registry.counter(
            "sidecar_group_attributes_malformed_total",
            "Group attribute parts ignored: no '=', bad name, too long, not allowed, too many",
        )
        self.m_dropped = registry.counter(
            "sidecar_group_attributes_dropped_total", "Group attributes removed by the drop policy"
        )

    @property
    def derives(self) -> bool:
        """True when attributes are derived from features (the caller then passes them)."""
        return bool(self._derive)

    def take_body_field(self, body: dict[str, Any]) -> Any:
        """Remove `parameters.<body_field>` from a V2 request body and return it (None when absent).

        A `parameters` object left empty is removed too, so the model server sees the
        body it would have seen had the client sent no attributes.
        """
        params = body.get("parameters")
        if self.body_field is None or not isinstance(params, dict) or self.body_field not in params:
            return None
        value = params.pop(self.body_field)
        if not params:
            del body["parameters"]
        return value

    def from_request(
        self,
        headers: Headers,
        body_obj: Mapping[str, Any] | str | None,
        features: Mapping[str, Any] | None,
    ) -> dict[str, str]:
        """The request's group attributes after the privacy policy.

        `headers` are the raw (lower-case name) request headers; `body_obj` is
        the value `take_body_field` returned (an object, or a string in the
        header's format); `features` maps feature names to the row's values.
        """
        attrs: dict[str, str] = {}
        bad = 0
        if features and self._derive:
            for name, rule in self._derive.items():
                if rule.feature in features:
                    label = rule.apply(features[rule.feature])
                    if label is not None:
                        attrs[name] = label
        if body_obj is not None:
            if isinstance(body_obj, str):
                bad += self._parse_into(body_obj, attrs)
            elif isinstance(body_obj, Mapping):
                # The flat case inline: a call per attribute showed in the request's cost.
                for k, v in body_obj.items():
                    if isinstance(v, dict):
                        bad += self._put_nested(attrs, f"{k}.", v, _MAX_NESTING - 1)
                    elif not self._put(attrs, str(k), _text(v) if v is not None else ""):
                        bad += 1
            else:
                bad += 1
        raw = self._header_value(headers)
        if raw is not None:
            if not attrs and body_obj is None:
                return self._from_header(raw)
            bad += self._parse_into(raw.decode("utf-8", "replace"), attrs)
        if bad:
            self.m_malformed.inc(bad)
        return self.apply_privacy(attrs) if self._needs_privacy else attrs

    def _from_header(self, raw: bytes) -> dict[str, str]:
        """Attributes from the header alone, remembered by its bytes.

        Traffic repeats a handful of attribute combinations: parsing, checking and
        (keyed) hashing them once each keeps that work off the request path. The
        counters still count every request.
        """
        hit = self._header_cache.get(raw)
        if hit is None:
            attrs: dict[str, str] = {}
            bad = self._parse_into(raw.decode("utf-8", "replace"), attrs)
            out, dropped = self._private(attrs) if self._needs_privacy else (attrs, 0)
            hit = (out, bad, dropped)
            if len(raw) <= _CACHED_HEADER_BYTES:
                if len(self._header_cache) >= _HEADER_CACHE:
                    self._header_cache.clear()
                self._header_cache[raw] = hit
        out, bad, dropped = hit
        if bad:
            self.m_malformed.inc(bad)
        if dropped:
            self.m_dropped.inc(dropped)
        return dict(out)

    def _header_value(self, headers: Headers) -> bytes | None:
        # dict, not Mapping: an ABC isinstance check costs more than the whole lookup.
        if isinstance(headers, dict):
            return headers.get(self.header_name)
        name = self.header_name
        found = None
        for k, v in headers:
            if k == name:
                # Repeated headers combine, as RFC 9110 allows for lists.
                found = v if found is None else found + b";" + v
        return found

    def _parse_into(self, text: str, attrs: dict[str, str]) -> int:
        """Add `name=value; ...` pairs to `attrs`; returns how many parts were malformed."""
        bad = 0
        for part in text.split(";"):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            if not sep or not self._put(attrs, name.strip(), value.strip()):
                bad += 1
        return bad

    def _put_nested(
        self, attrs: dict[str, str], prefix: str, obj: Mapping[str, Any], depth: int
    ) -> int:
        """Put a nested object's attributes under dotted names; returns how many were malformed.

        `{"applicant": {"gender": "F"}}` becomes `applicant.gender=F`: consumers get a
        flat map of strings, and the flattened name meets the same limits (name,
        `allowed`, `max_attributes`, privacy) as one sent flat. Past `depth` levels
        an object is ignored and counted.
        """
        if depth < 1:
            return len(obj) or 1
        bad = 0
        for k, v in obj.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                bad += self._put_nested(attrs, name + ".", v, depth - 1)
            elif not self._put(attrs, name, _text(v) if v is not None else ""):
                bad += 1
        return bad

    def _put(self, attrs: dict[str, str], name: str, value: str) -> bool:
        if (
            not _NAME.match(name)
            or not value
            or len(value) > self._max_value
            or (self._allowed is not None and name not in self._allowed)
            or (name not in attrs and len(attrs) >= self._max)
        ):
            return False
        attrs[name] = value
        return True

    def apply_privacy(self, attrs: Mapping[str, str]) -> dict[str, str]:
        """keep, hash (`hmac-sha256:<hex>`, keyed) or drop each attribute; idempotent."""
        out, dropped = self._private(attrs)
        if dropped:
            self.m_dropped.inc(dropped)
        return out

    def _private(self, attrs: Mapping[str, str]) -> tuple[dict[str, str], int]:
        out: dict[str, str] = {}
        dropped = 0
        for name, value in attrs.items():
            policy = self._policy.get(name, self._default)
            if policy == "keep":
                out[name] = value
            elif policy == "hash":
                out[name] = value if value.startswith(HASH_PREFIX) else self._hash(value)
            else:
                dropped += 1
        return out, dropped

    def _hash(self, value: str) -> str:
        assert self._hmac is not None  # settings refuse a hash policy without a key
        h = self._hmac.copy()
        h.update(value.encode())
        return HASH_PREFIX + h.hexdigest()[:32]
