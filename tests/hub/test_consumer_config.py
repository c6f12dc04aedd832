"""The hub's consumer settings: every `[kafka]` key in librdkafka's names, refusals naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import ConfigError, KafkaSettings, load_settings
from sidecar.hub.consumer import NOT_THE_CONSUMERS, SOURCES, check, consumer_config
from tests.hub.hubkit import ROOT
from tests.kafka_broker import free_port


def _config(**kafka: object) -> dict[str, object]:
    s = load_settings(environ={}, overrides={"kafka": kafka, "hub": {"group_id": "fleet"}})
    return consumer_config(s.kafka, s.hub)


def test_every_kafka_key_is_either_mapped_for_the_consumer_or_named_as_not_its() -> None:
    # A key added to [kafka] later must be decided on here: mapped, or named as the producer's.
    mapped = {key.removeprefix("kafka.") for key in SOURCES.values()}
    assert set(KafkaSettings.model_fields) == mapped | NOT_THE_CONSUMERS
    assert not mapped & NOT_THE_CONSUMERS


def test_sasl_over_tls_maps_to_librdkafkas_names(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    config = _config(
        bootstrap_servers=" b1:9093, b2:9093 ,",
        client_id="fleet",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="hub",
        sasl_password="pw",
        ssl_cafile=str(ca),
        ssl_check_hostname=False,
    )
    assert config["bootstrap.servers"] == "b1:9093,b2:9093"
    assert config["group.id"] == "fleet"
    assert config["client.id"] == "fleet-hub"
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("hub", "pw")
    assert config["ssl.ca.location"] == str(ca)
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    # Offsets are the hub's to commit, after its transaction.
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False


def test_mutual_tls_maps_the_client_certificate_key_and_its_password(tmp_path: Path) -> None:
    config = _config(
        security_protocol="SSL",
        ssl_certfile=str(tmp_path / "c.pem"),
        ssl_keyfile=str(tmp_path / "k.pem"),
        ssl_password="kp",
    )
    assert config["ssl.certificate.location"] == str(tmp_path / "c.pem")
    assert config["ssl.key.location"] == str(tmp_path / "k.pem")
    assert config["ssl.key.password"] == "kp"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert "sasl.mechanism" not in config


def test_the_defaults_pass_librdkafkas_own_check() -> None:
    check(_config())


def test_oauthbearer_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.sasl_mechanism.*OAUTHBEARER"):
        _config(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")


def test_a_ca_file_librdkafka_cannot_read_fails_the_check_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.ssl_cafile"):
        check(_config(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem")))


def test_a_client_key_that_is_not_a_key_fails_the_check_naming_the_key(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"kafka\.ssl_keyfile"):
        check(_config(security_protocol="SSL", ssl_keyfile=str(key)))


def test_a_sasl_mechanism_this_librdkafka_lacks_fails_the_check_naming_the_key() -> None:
    # The wheels' librdkafka is built without Cyrus SASL: no Kerberos (GSSAPI).
    from confluent_kafka import Consumer, KafkaException

    try:
        Consumer({"group.id": "probe", "builtin.features": "sasl_gssapi"}).close()
    except KafkaException:
        pass
    else:
        pytest.skip("this librdkafka has GSSAPI")
    with pytest.raises(ConfigError, match=r"kafka\.sasl_mechanism"):
        check(_config(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI"))


def test_sidecar_hub_with_a_ca_file_it_cannot_read_fails_at_start_naming_the_key(
    tmp_path: Path,
) -> None:
    # Checked before the hub connects to anything: no database is listening on this port.
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "hub"],
        env={
            "PYTHONPATH": str(ROOT),
            "SIDECAR_HUB__DATABASE_URL": f"postgresql://hub@127.0.0.1:{free_port()}/fleet",
            "SIDECAR_KAFKA__SECURITY_PROTOCOL": "SSL",
            "SIDECAR_KAFKA__SSL_CAFILE": str(tmp_path / "missing.pem"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "kafka.ssl_cafile" in done.stderr
