"""The hub's Kafka consumer settings: the shared `[kafka]` section in librdkafka's names.

The hub consumes with confluent-kafka (librdkafka): its consumer costs about a
third of kafka-python's CPU per event (the records are decoded in C and fetched
ahead by librdkafka's own threads). The sidecars still produce with kafka-python.
Every `[kafka]` key the hub reads is mapped here; a value librdkafka cannot take
fails the hub's start naming the key, never later in the consumer's thread.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException

from sidecar.config import ConfigError, HubSettings, KafkaSettings

log = logging.getLogger("sidecar.hub.kafka")

# The `[kafka]` key behind each librdkafka property the hub sets from it, to name it in errors.
SOURCES: dict[str, str] = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "client.id": "kafka.client_id",
    "security.protocol": "kafka.security_protocol",
    "sasl.mechanism": "kafka.sasl_mechanism",
    "sasl.username": "kafka.sasl_username",
    "sasl.password": "kafka.sasl_password",
    "ssl.ca.location": "kafka.ssl_cafile",
    "ssl.certificate.location": "kafka.ssl_certfile",
    "ssl.key.location": "kafka.ssl_keyfile",
    "ssl.key.password": "kafka.ssl_password",
    "ssl.endpoint.identification.algorithm": "kafka.ssl_check_hostname",
}
# `[kafka]` keys that are the producer's (or the topics, subscribed by name), not the hub's.
NOT_THE_CONSUMERS = frozenset(
    {
        "topic_decisions",
        "topic_explanations",
        "topic_reviews",
        "topic_gaps",
        "topic_outcomes",
        "topic_alerts",
        "source",
        "enable_idempotence",
        "linger_ms",
        "batch_size",
        "compression_type",
        "max_in_flight_events",
        "request_timeout_ms",
        "delivery_timeout_ms",
        "retry_backoff_ms",
        "extra",  # kafka-python KafkaProducer options
    }
)


def consumer_config(kafka: KafkaSettings, hub: HubSettings) -> dict[str, Any]:
    """librdkafka consumer properties from `[kafka]` and `[hub]`."""
    if kafka.sasl_mechanism == "OAUTHBEARER":
        # librdkafka would fall back to unsecured test tokens; `[kafka]` has no token source.
        raise ConfigError(
            "config key 'kafka.sasl_mechanism': OAUTHBEARER is not supported by the hub's"
            " consumer (no token source in [kafka]); use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        )
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(
            s.strip() for s in kafka.bootstrap_servers.split(",") if s.strip()
        ),
        "group.id": hub.group_id,
        "client.id": f"{kafka.client_id}-hub",
        # Offsets are committed by hand, only those of rows the database has committed.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # kafka-python's defaults, not librdkafka's 45 s: a killed hub's partitions move to
        # the others within 10 s.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 3_000,
        # One poll may fill `batch_max_events` from one busy partition (as kafka-python's
        # max_partition_fetch_bytes of 8 MiB did); the prefetch queue stays bounded.
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        # New partitions or topics reach the group's assignment within 30 s, not 5 minutes.
        "topic.metadata.refresh.interval.ms": 30_000,
        # kafka-python's consumer asked the broker to create missing topics; keep doing so,
        # so a hub started before the first sidecar gets its partitions at once.
        "allow.auto.create.topics": True,
        "security.protocol": kafka.security_protocol.lower(),
        "ssl.endpoint.identification.algorithm": "https" if kafka.ssl_check_hostname else "none",
    }
    if kafka.sasl_mechanism is not None:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        if kafka.sasl_username is not None:
            config["sasl.username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            config["sasl.password"] = kafka.sasl_password.get_secret_value()
    for name, path in (
        ("ssl.ca.location", kafka.ssl_cafile),
        ("ssl.certificate.location", kafka.ssl_certfile),
        ("ssl.key.location", kafka.ssl_keyfile),
    ):
        if path is not None:
            config[name] = str(path)
    if kafka.ssl_password is not None:
        config["ssl.key.password"] = kafka.ssl_password.get_secret_value()
    return config


def check(config: dict[str, Any]) -> None:
    """Let librdkafka read the properties (TLS files and keys, SASL mechanism) without
    connecting; its refusal becomes a ConfigError naming the `[kafka]` key(s) involved."""
    offline = {k: v for k, v in config.items() if k != "bootstrap.servers"}
    try:
        probe = Consumer(offline, logger=log)
    except (KafkaException, ValueError, TypeError) as e:
        arg = e.args[0] if e.args else e
        text = arg.str() if isinstance(arg, KafkaError) else str(arg)
        keys = [key for name, key in SOURCES.items() if name in text]
        if not keys and "SASL mechanism" in text:
            keys = ["kafka.sasl_mechanism"]
        named = ", ".join(f"'{k}'" for k in keys) or "'kafka'"
        raise ConfigError(f"config key {named}: the hub's Kafka consumer refused it: {text}") from e
    probe.close()
