"""The monitor over a real Kafka broker: the report equals the files source's, and two
instances (partitions split between them) merge to exactly what one reports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from sidecar.cli import main
from sidecar.config import Settings, load_settings
from sidecar.monitor.runner import Continuous, report_once
from sidecar.sinks.events import dumps
from sidecar.sinks.kafka import producer_config
from tests.kafka_broker import KafkaBroker, kafka_broker  # noqa: F401
from tests.monitor.gen import FEATURES, generate
from tests.monitor.test_report import RULES, write_config, write_folder, write_reference

PARTITIONS = 4


@pytest.fixture
def topics(kafka_broker: KafkaBroker) -> Iterator[dict[str, str]]:  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    names = {
        "decision": f"m{tag}.decisions",
        "explanation": f"m{tag}.explanations",
        "review": f"m{tag}.reviews",
        "gap": f"m{tag}.gaps",
        "outcome": f"m{tag}.outcomes",
        "alert": f"m{tag}.alerts",
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, client_id="tests")
    try:
        admin.create_topics(
            [NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names.values()]
        )
    finally:
        admin.close()
    yield names


def _settings(root: Path, bootstrap: str, names: dict[str, str], **monitor: Any) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "model": {
                "feature_names": FEATURES,
                "class_labels": ["default", "repaid"],
                "favourable_label": "repaid",
            },
            "kafka": {
                "bootstrap_servers": bootstrap,
                "topic_decisions": names["decision"],
                "topic_explanations": names["explanation"],
                "topic_reviews": names["review"],
                "topic_gaps": names["gap"],
            },
            "monitor": {
                "min_group_size": 30,
                "reference": str(root / "reference.parquet"),
                "topic_outcomes": names["outcome"],
                "topic_alerts": names["alert"],
                "state_dir": str(root / "state"),
                "alerts": RULES,
                **monitor,
            },
        },
    )


def _publish(settings: Settings, names: dict[str, str], events: list[dict[str, Any]]) -> None:
    # The sidecar's own producer settings: keyed by decision id, CRC-32 partitioner.
    producer = KafkaProducer(**producer_config(settings.kafka))
    for ev in events:
        key = ev.get("decision_id") or ev["event_id"]
        producer.send(names[ev["event_type"]], key=key.encode(), value=dumps(ev))
    producer.flush(30)
    producer.close(5)


def _without_time(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rep.items() if k != "generated_at"}


def test_kafka_report_two_instances_and_alerts(
    kafka_broker: KafkaBroker,  # noqa: F811
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    data = generate(3000, seed=41, shift=0.3)
    write_reference(tmp_path / "reference.parquet", generate(1500, seed=4))
    settings = _settings(tmp_path, kafka_broker.bootstrap, topics)
    _publish(settings, topics, data.events)
    # The same events in a files-sink folder: both sources give one report.
    write_folder(tmp_path / "events", data.events)
    (tmp_path / "events" / "sidecar.outcomes").rename(tmp_path / "events" / topics["outcome"])
    for kind in ("decisions", "explanations", "reviews", "gaps"):
        if (tmp_path / "events" / f"sidecar.{kind}").is_dir():
            (tmp_path / "events" / f"sidecar.{kind}").rename(
                tmp_path / "events" / topics[kind[:-1]]
            )
    from_files = report_once(settings, tmp_path / "events")
    config = tmp_path / "m.toml"
    write_config(config, tmp_path / "reference.parquet", topic_outcomes=topics["outcome"])
    with config.open("a") as f:
        f.write("[kafka]\n")
        for key in ("decision", "explanation", "review", "gap"):
            f.write(f'topic_{key}s = "{topics[key]}"\n')
    out = tmp_path / "kafka-report.json"
    argv = ["monitor", "report", "--config", str(config), "--events", kafka_broker.bootstrap]
    assert main([*argv, "--format", "json", "--out", str(out)]) == 0
    from_kafka = orjson.loads(out.read_bytes())
    assert from_kafka["traffic"]["decisions"] == 3000
    assert from_kafka["traffic"]["outcomes"] == int((data.y_true >= 0).sum())
    assert _without_time(from_kafka) == _without_time(from_files)

    one = report_once(settings, kafka_broker.bootstrap)
    second = Continuous(
        _settings(tmp_path, kafka_broker.bootstrap, topics, instance=1, instances=2),
        kafka_broker.bootstrap,
    )
    first = Continuous(
        _settings(tmp_path, kafka_broker.bootstrap, topics, instance=0, instances=2),
        kafka_broker.bootstrap,
    )
    try:
        assert second.step() is None
        merged = first.step()
    finally:
        second.close()
        first.close()
    halves = [second.ingest.state.traffic["decisions"], first.ingest.state.traffic["decisions"]]
    assert sum(halves) == 3000 and min(halves) > 0
    assert merged is not None and _without_time(merged) == _without_time(one)

    consumer = KafkaConsumer(
        topics["alert"],
        bootstrap_servers=kafka_broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    alerts = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    fair = [a for a in alerts if a["rule"] == "four_fifths"]
    assert fair and {a["attribute"] for a in fair} == {"gender"}
    assert all(a["groups"][0] == "C" for a in fair)
