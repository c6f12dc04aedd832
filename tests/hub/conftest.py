"""The hub's tests run against a real PostgreSQL (and, for ingest, a real Kafka broker)."""

from __future__ import annotations

from tests.kafka_broker import kafka_broker, kafka_topics
from tests.postgres_server import hub_database, postgres_server

__all__ = ["hub_database", "kafka_broker", "kafka_topics", "postgres_server"]
