"""Secrets as they may be shown: in printed settings, error messages and logs.

Bearer tokens show as their `sha256:<hex>` digest (the form `auth.tokens` also
accepts); passwords, `groups.hash_key` and credential-like `kafka.extra`
options as a fixed mask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.config.settings import Settings

SECRET_MASK = "**********"
_TOKEN_DIGEST_PREFIX = "sha256:"


def mask_token(token: str) -> str:
    """A bearer token as it may be shown: its `sha256:<hex>` digest (the form auth.tokens accepts)."""
    if token.startswith(_TOKEN_DIGEST_PREFIX):
        return token
    return _TOKEN_DIGEST_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def masked_loc(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    # A dict key in an error location is input: under auth.tokens it is a bearer token.
    parts = tuple(str(p) for p in loc)
    if parts[:2] == ("auth", "tokens") and len(parts) > 2:
        return (*parts[:2], mask_token(parts[2]), *parts[3:])
    return parts


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data with every secret masked (for printing and logs)."""
    # mode="json" already renders SecretStr fields (sasl_password, ssl_password, hash_key) masked.
    data = settings.model_dump(mode="json")
    auth = data["auth"]
    auth["tokens"] = {mask_token(k): v for k, v in auth["tokens"].items()}
    data["kafka"]["extra"] = masked_extra(data["kafka"]["extra"])
    return data


def masked_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    """kafka.extra with the values of credential options (sasl_plain_password, ...) masked."""
    return {
        k: SECRET_MASK if any(w in k.lower() for w in ("password", "secret", "token")) else v
        for k, v in extra.items()
    }
