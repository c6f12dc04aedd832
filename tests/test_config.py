from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_settings


def test_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[proxy]\nupstream = "http://127.0.0.1:9001"\nport = 18080\n')
    s = load_settings(f, environ={"SIDECAR_PROXY__PORT": "18081"})
    assert s.proxy.upstream == "http://127.0.0.1:9001"
    assert s.proxy.port == 18081


@pytest.mark.parametrize(
    ("toml", "environ", "names"),
    [
        ("[proxy]\nupstreem = 'http://x'\n", {}, "proxy.upstreem"),
        ("[proxie]\nport = 1\n", {}, "proxie"),
        ("[proxy]\nport = 'eighty'\n", {}, "proxy.port"),
        ("[proxy]\nupstream = 'ftp://h'\n", {}, "proxy.upstream"),
        ("[proxy]\nupstream = 'http://h:1/path'\n", {}, "proxy.upstream"),
        ("", {"SIDECAR_PROXY__TIMEOUT_S": "-1"}, "SIDECAR_PROXY__TIMEOUT_S"),
        ("", {"SIDECAR_PROXY__NOPE": "1"}, "SIDECAR_PROXY__NOPE"),
        ("", {"SIDECAR_NOPE": "1"}, "SIDECAR_NOPE"),
        ("[decisions]\nflush_interval_ms = 0\n", {}, "decisions.flush_interval_ms"),
        ("[proxy\n", {}, "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str], names: str
) -> None:
    f = tmp_path / "s.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(names)):
        load_settings(f, environ=environ)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(tmp_path / "nope.toml", environ={})
