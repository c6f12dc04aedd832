"""The monitor over a real Kafka broker: the report equals the files source's, and two
instances (partitions split between them) merge to exactly what one reports."""

from __future__ import annotations

import random
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
from tests.postgres_server import hub_database, postgres_server  # noqa: F401

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
                "topic_outcomes": names["outcome"],
            },
            "monitor": {
                "min_group_size": 30,
                "reference": str(root / "reference.parquet"),
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
    write_config(config, tmp_path / "reference.parquet")
    with config.open("a") as f:
        f.write("[kafka]\n")
        for key in ("decision", "explanation", "review", "gap", "outcome"):
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
    halves = [
        second.local_state().traffic["decisions"],
        first.local_state().traffic["decisions"],
    ]
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


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    from sidecar.demo.process import ModelServerProcess

    with ModelServerProcess() as server:
        yield server.url


def test_the_demo_model_through_the_sidecar_and_kafka(
    kafka_broker: KafkaBroker,  # noqa: F811
    topics: dict[str, str],
    model_server: str,
    tmp_path: Path,
) -> None:
    import numpy as np

    from sidecar.demo.data import generate as demo_rows
    from sidecar.demo.model import model_settings
    from sidecar.sinks.events import event_id, rfc3339
    from tests.integration.test_service_e2e import _post, _v2
    from tests.servers import running_sidecar, wait_until

    model = model_settings()
    kafka = {
        "bootstrap_servers": kafka_broker.bootstrap,
        "linger_ms": 2,
        "topic_decisions": topics["decision"],
        "topic_explanations": topics["explanation"],
        "topic_reviews": topics["review"],
        "topic_gaps": topics["gap"],
        "topic_outcomes": topics["outcome"],
    }
    data = demo_rows(200, seed=17)
    with running_sidecar(
        model_server,
        model=model,
        sink={"kind": "kafka"},
        kafka=kafka,
        spool={"directory": str(tmp_path / "spool"), "fsync": "never"},
        sampling={"rate": 0.5},
    ) as svc:
        for i in range(0, 200, 4):
            rows = [
                [None if np.isnan(v) else float(v) for v in data.features[j]]
                for j in range(i, i + 4)
            ]
            gender = "F" if (i // 4) % 2 else "M"
            r = _post(
                svc,
                "/v2/models/credit/infer",
                _v2(rows),
                {"x-group-attributes": f"gender={gender}"},
            )
            assert r.status == 200
        assert svc.pipeline.drain(10)
        assert svc.explain_stage is not None and svc.explain_stage.drain(30)
        settings = load_settings(
            environ={},
            overrides={
                "model": model,
                "kafka": kafka,
                "monitor": {"min_group_size": 20},
            },
        )
        wait_until(
            lambda: report_once(settings, kafka_broker.bootstrap)["traffic"]["decisions"] == 200,
            timeout_s=60,
            what="200 decisions in Kafka",
            interval_s=0.5,
        )
    # Ground truth a month later, keyed by decision id as every event is.
    decisions = report_once(settings, kafka_broker.bootstrap)
    consumer = KafkaConsumer(
        topics["decision"],
        bootstrap_servers=kafka_broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    ids = sorted(orjson.loads(m.value)["decision_id"] for m in consumer)
    consumer.close()
    assert len(ids) == 200 and decisions["traffic"]["explanations"] > 0
    labels = model["class_labels"]
    outcomes = [
        {
            "event_type": "outcome",
            "event_id": event_id(did, "outcome"),
            "decision_id": did,
            "outcome": labels[k % 2],
            "observed_at": rfc3339(1_800_000_000.0 + 30 * 86_400),
            "source": "test",
        }
        for k, did in enumerate(ids[::2])
    ]
    _publish(settings, topics, outcomes)
    rep = report_once(settings, kafka_broker.bootstrap)
    t = rep["traffic"]
    assert t["decisions"] == 200 and t["outcomes"] == 100 and t["waiting"]["outcomes"] == 0
    groups = rep["cumulative"]["attributes"]["gender"]["groups"]
    assert groups["F"]["count"] == groups["M"]["count"] == 100
    assert groups["F"]["outcomes"] + groups["M"]["outcomes"] == 100
    assert groups["F"]["true_positive_rate"]["denominator"] > 0


def _checkpointed(root: Path, store: str, url: str | None) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset the stored checkpoints go on from."""
    found: list[tuple[str, dict[str, int]]] = []
    if store == "folder":
        for path in sorted((root / "state").glob("kafka-p*.ckpt")):
            with path.open("rb") as f:
                found.append((path.stem, orjson.loads(f.readline())["offsets"]))
    else:
        import psycopg

        assert url is not None
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT shard, offsets FROM monitor_state WHERE monitor = 'killed'"
            ).fetchall()
        found = [(str(r[0]), r[1]) for r in rows]
    return {
        (topic, int(shard.removeprefix("kafka-p"))): offset
        for shard, offsets in found
        for topic, offset in offsets.items()
    }


@pytest.mark.parametrize("store", ["folder", "database"])
def test_a_monitor_killed_mid_stream_and_restarted_reports_what_an_uninterrupted_one_does(
    kafka_broker: KafkaBroker,  # noqa: F811
    topics: dict[str, str],
    tmp_path: Path,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import threading

    from kafka import TopicPartition

    from tests.servers import wait_until

    url = request.getfixturevalue("hub_database") if store == "database" else None
    data = generate(3000, seed=43, shift=0.3)
    # Shuffled: outcomes and reviews come before and after their decisions, across the kill.
    events = list(data.events)
    random.Random(9).shuffle(events)
    chunks = [events[:2000], events[2000:5000], events[5000:]]
    n_decisions = [sum(e["event_type"] == "decision" for e in c) for c in chunks]
    write_reference(tmp_path / "reference.parquet", generate(1500, seed=4))
    settings = _settings(tmp_path, kafka_broker.bootstrap, topics)
    config = tmp_path / "m.toml"
    write_config(
        config,
        tmp_path / "reference.parquet",
        state_dir=str(tmp_path / "state"),
        state_store=store,
        group_id="killed",
        interval_s=0.2,
        source=kafka_broker.bootstrap,
        topic_alerts=topics["alert"],
    )
    with config.open("a") as f:
        f.write(f'[kafka]\nbootstrap_servers = "{kafka_broker.bootstrap}"\n')
        for key in ("decision", "explanation", "review", "gap", "outcome"):
            f.write(f'topic_{key}s = "{topics[key]}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    if url is not None:
        env["SIDECAR_HUB__DATABASE_URL"] = url
    report = tmp_path / "state" / "report.json"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "monitor", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
        )

    def decisions_read() -> int:
        try:
            return int(orjson.loads(report.read_bytes())["traffic"]["decisions"])
        except (FileNotFoundError, orjson.JSONDecodeError):
            return -1

    _publish(settings, topics, chunks[0])
    proc = start()
    try:
        wait_until(
            lambda: decisions_read() == n_decisions[0],
            timeout_s=90,
            what="the first chunk read",
            interval_s=0.05,
        )

        # The second chunk flows in small batches while the monitor reads it: killed mid-stream.
        def trickle() -> None:
            for i in range(0, len(chunks[1]), 150):
                _publish(settings, topics, chunks[1][i : i + 150])

        publisher = threading.Thread(target=trickle)
        publisher.start()
        wait_until(
            lambda: decisions_read() > n_decisions[0],
            timeout_s=90,
            what="part of the second chunk read",
            interval_s=0.02,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        publisher.join(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    killed_at = decisions_read()
    assert n_decisions[0] < killed_at
    _publish(settings, topics, chunks[2])
    uninterrupted = report_once(settings, kafka_broker.bootstrap)
    assert uninterrupted["traffic"]["decisions"] == 3000
    # Whatever the checkpoints cover is gone from the broker: a monitor that started over
    # would miss it, one that read it again would count it twice.
    covered = _checkpointed(tmp_path, store, url)
    assert covered and sum(covered.values()) > 0
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, client_id="tests")
    try:
        admin.delete_records({TopicPartition(t, p): o for (t, p), o in covered.items() if o})
    finally:
        admin.close()
    proc = start()
    try:
        wait_until(
            lambda: decisions_read() == 3000,
            timeout_s=120,
            what="every decision read after the restart",
            interval_s=0.1,
        )
        # The step that read the last decision may not be the last to read outcomes.
        wait_until(
            lambda: (
                orjson.loads(report.read_bytes())["traffic"]["outcomes"]
                == uninterrupted["traffic"]["outcomes"]
            ),
            timeout_s=60,
            what="every outcome read",
            interval_s=0.1,
        )
        resumed = orjson.loads(report.read_bytes())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _without_time(resumed) == _without_time(uninterrupted)


def test_topics_with_different_partition_counts_are_refused_at_start(
    kafka_broker: KafkaBroker,  # noqa: F811
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    odd = topics["outcome"] + ".two"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, client_id="tests")
    try:
        admin.create_topics([NewTopic(odd, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    from tests.servers import wait_until

    # A topic just created may not be in the broker's metadata yet: wait for it, not sleep.
    probe = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    try:
        wait_until(
            lambda: len(probe.partitions_for_topic(odd) or ()) == 2,
            timeout_s=30,
            what="the new topic's metadata",
            interval_s=0.1,
        )
    finally:
        probe.close()
    write_reference(tmp_path / "reference.parquet", generate(500, seed=4))
    settings = _settings(tmp_path, kafka_broker.bootstrap, {**topics, "outcome": odd})
    with pytest.raises(ValueError, match="different partition counts") as err:
        Continuous(settings, kafka_broker.bootstrap)
    assert odd in str(err.value) and topics["decision"] in str(err.value)
