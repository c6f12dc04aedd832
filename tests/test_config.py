from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
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
        ("[model]\nclass_labels = ['a', 'b']\nfavourable_label = 'c'\n", {}, "favourable_label"),
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


def test_environment_names_are_case_insensitive_and_lists_are_json() -> None:
    s = load_settings(
        environ={"sidecar_proxy__port": "18082", "Sidecar_Model__Feature_Names": '["a", "b"]'}
    )
    assert s.proxy.port == 18082
    assert s.model.feature_names == ["a", "b"]


def test_a_list_that_is_not_json_names_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"model\.feature_names.*SIDECAR_MODEL__FEATURE_NAMES"):
        load_settings(environ={"SIDECAR_MODEL__FEATURE_NAMES": "a,b"})


def test_the_given_environment_is_read_and_the_process_environment_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDECAR_PROXY__PORT", "18083")
    before = dict(os.environ)
    assert load_settings(environ={}).proxy.port == 8080
    assert load_settings(environ={"SIDECAR_PROXY__PORT": "18084"}).proxy.port == 18084
    assert dict(os.environ) == before
    assert load_settings().proxy.port == 18083  # no mapping given: os.environ


def test_concurrent_loads_each_see_their_own_environment() -> None:
    # The loader once swapped os.environ for the duration of a load; two threads then
    # saw each other's variables.
    start = threading.Barrier(4)

    def load(port: int) -> list[int]:
        start.wait()
        env = {"SIDECAR_CONTROL__PORT": str(port)}
        return [load_settings(environ=env).control.port for _ in range(100)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(load, range(18090, 18094)))
    assert results == [[p] * 100 for p in range(18090, 18094)]
