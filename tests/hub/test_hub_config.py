"""The hub's settings and the sidecar's review.store: bad configuration fails at start, naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar.config import ConfigError, load_settings, masked_dump
from sidecar.service import Service
from tests.hub.hubkit import ROOT
from tests.kafka_broker import dead_bootstrap, free_port


def test_the_database_url_comes_from_the_environment_and_is_never_shown() -> None:
    url = "postgresql://hub:s3cret@db:5432/fleet"
    settings = load_settings(environ={"SIDECAR_HUB__DATABASE_URL": url})
    assert settings.hub.database_url is not None
    assert settings.hub.database_url.get_secret_value() == url
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(masked_dump(settings))
    assert settings.hub.port == 8082


def test_a_database_url_that_is_not_postgresql_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"hub\.database_url"):
        load_settings(environ={"SIDECAR_HUB__DATABASE_URL": "mysql://x@y/z"})


def test_review_hold_mode_with_the_hub_store_needs_the_hubs_url() -> None:
    with pytest.raises(ConfigError, match=r"review.*hold.*review\.hub_url"):
        load_settings(environ={}, overrides={"review": {"store": "hub", "mode": "hold"}})


def test_the_hub_review_store_needs_the_kafka_sink() -> None:
    settings = load_settings(
        environ={},
        overrides={"review": {"store": "hub"}, "proxy": {"port": 0}, "control": {"port": 0}},
    )
    with pytest.raises(ConfigError, match=r"review\.store.*sink\.kind"):
        Service(settings)


def _hub(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "hub"],
        env={"PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sidecar_hub_without_a_database_url_fails_naming_the_key() -> None:
    done = _hub({})
    assert done.returncode == 2
    assert "hub.database_url" in done.stderr and "SIDECAR_HUB__DATABASE_URL" in done.stderr


def test_sidecar_hub_with_an_unreachable_database_fails_at_start() -> None:
    done = _hub(
        {
            "SIDECAR_HUB__DATABASE_URL": f"postgresql://x:pw1234@127.0.0.1:{free_port()}/db",
            "SIDECAR_KAFKA__BOOTSTRAP_SERVERS": dead_bootstrap(),
        }
    )
    assert done.returncode == 2
    assert "hub.database_url" in done.stderr
    assert "pw1234" not in done.stderr
