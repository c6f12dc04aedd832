"""Tokens from configuration and from a file; bad entries are refused naming what is wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.control.auth import Principal, TokenTable, authenticator_from_settings


def table(auth: dict[str, Any]) -> TokenTable:
    return TokenTable.from_settings(load_settings(environ={}, overrides={"auth": auth}).auth)


def test_tokens_from_config_a_toml_file_and_a_json_file(tmp_path: Path) -> None:
    toml = tmp_path / "tokens.toml"
    toml.write_text('[tokens."toml-token-0123456789"]\nname = "tia"\nrole = "auditor"\n')
    js = tmp_path / "tokens.json"
    digest = hashlib.sha256(b"json-token-0123456789").hexdigest()
    js.write_text(json.dumps({"tokens": {f"sha256:{digest}": {"name": "jo", "role": "admin"}}}))
    inline = {"inline-token-0123456789": {"name": "ann", "role": "reviewer"}}
    t1 = table({"tokens": inline, "tokens_file": str(toml)})
    assert t1.lookup("inline-token-0123456789") == Principal("ann", "reviewer")
    assert t1.lookup("toml-token-0123456789") == Principal("tia", "auditor")
    assert t1.lookup("toml-token-012345678") is None
    t2 = table({"tokens_file": str(js)})
    # Configured by digest only: the clear token never sits in the file.
    assert t2.lookup("json-token-0123456789") == Principal("jo", "admin") and len(t2) == 1


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("tokens = 3", ".toml", "expected a 'tokens' table"),
        ("{not json", ".json", "not valid TOML/JSON"),
        ('{"tokens": {"long-enough-token-123": {"name": "x", "role": "boss"}}}', ".json", "role"),
        ('{"tokens": {"long-enough-token-123": {"role": "admin"}}}', ".json", "name"),
        ('{"tokens": {"short": {"name": "x", "role": "admin"}}}', ".json", "at least 16"),
        ('{"tokens": {"sha256:abc": {"name": "x", "role": "admin"}}}', ".json", "64 hex"),
    ],
)
def test_bad_token_files_are_refused(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    f = tmp_path / f"tokens{suffix}"
    f.write_text(content)
    with pytest.raises(ConfigError, match=r"auth\.tokens_file") as err:
        table({"tokens_file": str(f)})
    assert message in str(err.value)


def test_missing_file_and_weak_inline_tokens_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        table({"tokens_file": str(tmp_path / "absent.toml")})
    with pytest.raises(ConfigError, match=r"auth\.tokens: tokens must be at least 16"):
        table({"tokens": {"123": {"name": "x", "role": "admin"}}})
    # The key is the bearer token: the message names it by its digest, never in clear.
    with pytest.raises(ConfigError, match=r"auth\.tokens\.sha256:[0-9a-f]{64}\.role") as err:
        table({"tokens": {"t0123456789abcdef": {"name": "x", "role": "root"}}})
    assert "t0123456789abcdef" not in str(err.value)


def test_group_attribute_roles_are_configurable() -> None:
    s = load_settings(
        environ={}, overrides={"auth": {"group_attribute_roles": ["reviewer", "admin"]}}
    )
    auth = authenticator_from_settings(s.auth)
    assert auth.sees_group_attributes(Principal("r", "reviewer"))
    assert not auth.sees_group_attributes(Principal("a", "auditor"))
