"""Against a real Kafka broker: the monitor's fields in decision events, outcomes posted and loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sidecar.cli import main
from sidecar.sinks.events import CE_TYPES
from tests.eventlib import validate_event
from tests.kafka_broker import (  # noqa: F401
    KafkaBroker,
    dead_bootstrap,
    kafka_broker,
    kafka_topics,
)
from tests.outcomes.helpers import LABELS, MODEL, TOKENS, WRITER, infer, v2_model
from tests.servers import running_sidecar


def with_outcomes(broker: KafkaBroker, topics: dict[str, str]) -> dict[str, str]:
    named = {**topics, "topic_outcomes": topics["topic_decisions"].replace("decisions", "outcomes")}
    broker.create_topics(named["topic_outcomes"])
    return named


def headers(record: Any) -> dict[str, bytes]:
    return dict(record.headers)


def test_decision_and_outcome_events_round_trip_through_kafka(
    kafka_broker: KafkaBroker,  # noqa: F811
    kafka_topics: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = with_outcomes(kafka_broker, kafka_topics)
    with (
        v2_model() as up,
        running_sidecar(
            up.url,
            model=MODEL,
            auth={"tokens": TOKENS},
            sink={"kind": "kafka"},
            kafka={"bootstrap_servers": kafka_broker.bootstrap, "linger_ms": 2, **topics},
            spool={"directory": str(tmp_path / "spool"), "fsync": "never"},
        ) as svc,
    ):
        call_id = infer(svc, groups={"applicant": {"gender": "F"}})
        did = f"{call_id}/0"
        # Recorded first: an outcome posted before its decision is recorded is "unknown".
        assert svc.pipeline.drain(5)
        r = httpx.post(
            f"{svc.control_url}/outcomes",
            json={
                "outcomes": [
                    {
                        "decision_id": did,
                        "outcome": "default",
                        "observed_at": "2027-01-05T00:00:00Z",
                    }
                ]
            },
            headers={"authorization": f"Bearer {WRITER}"},
        )
        assert r.status_code == 200
        assert r.json()["results"][0]["status"] == "accepted"
        decisions = kafka_broker.consume(topics["topic_decisions"], 1)
        outcomes = kafka_broker.consume(topics["topic_outcomes"], 1)

    (d,) = decisions
    body = orjson.loads(d.value)
    validate_event(body)
    assert body["class_labels"] == LABELS and body["favourable_label"] == "repaid"
    assert body["decision_rule"] == {"kind": "argmax"}
    assert body["group_attributes"] == {"applicant.gender": "F"}

    (o,) = outcomes
    event = orjson.loads(o.value)
    validate_event(event)
    assert o.key == did.encode()
    assert event["decision_id"] == did and event["outcome"] == "default"
    assert event["decision_known"] is True and event["source"] == "api"
    h = headers(o)
    assert h["ce_type"] == CE_TYPES["outcome"].encode()
    assert h["ce_id"] == event["event_id"].encode()
    assert h["ce_subject"] == did.encode() and h["ce_time"] == event["time"].encode()


def test_outcomes_load_sends_a_file_through_kafka(
    kafka_broker: KafkaBroker,  # noqa: F811
    kafka_topics: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = with_outcomes(kafka_broker, kafka_topics)
    config = tmp_path / "sidecar.toml"
    config.write_text(
        '[sink]\nkind = "kafka"\n'
        f'[kafka]\nbootstrap_servers = "{kafka_broker.bootstrap}"\n'
        f'topic_outcomes = "{topics["topic_outcomes"]}"\nlinger_ms = 2\n'
        f'[spool]\ndirectory = "{tmp_path / "spool"}"\n'
    )
    data = tmp_path / "truth.csv"
    data.write_text(
        "decision_id,outcome,observed_at\n"
        + "".join(f"call{i}/0,{i % 2},2026-12-01T10:00:00Z\n" for i in range(50))
    )
    assert main(["outcomes", "load", str(data), "--config", str(config), "--timeout", "60"]) == 0
    records = kafka_broker.consume(topics["topic_outcomes"], 50)
    events = {orjson.loads(r.value)["decision_id"]: orjson.loads(r.value) for r in records}
    assert len(events) == 50
    assert events["call7/0"]["outcome"] == 1 and events["call7/0"]["source"] == "file:truth.csv"
    # The loader's spool is its own: a running sidecar holds the lock on spool.directory.
    assert (tmp_path / "spool-outcomes-load").is_dir() and not (tmp_path / "spool").exists()


def test_what_a_down_broker_did_not_take_is_sent_by_the_next_load(
    kafka_broker: KafkaBroker,  # noqa: F811
    kafka_topics: dict[str, str],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = with_outcomes(kafka_broker, kafka_topics)

    def config(bootstrap: str) -> str:
        f = tmp_path / "sidecar.toml"
        f.write_text(
            '[sink]\nkind = "kafka"\n'
            f'[kafka]\nbootstrap_servers = "{bootstrap}"\n'
            f'topic_outcomes = "{topics["topic_outcomes"]}"\nlinger_ms = 2\n'
            "retry_backoff_ms = 100\n"
            f'[spool]\ndirectory = "{tmp_path / "spool"}"\n'
        )
        return str(f)

    def write(name: str, first: int) -> str:
        data = tmp_path / name
        data.write_text(
            "decision_id,outcome,observed_at\n"
            + "".join(f"call{i}/0,{i},2026-12-01T10:00:00Z\n" for i in range(first, first + 10))
        )
        return str(data)

    down = config(dead_bootstrap())
    assert main(["outcomes", "load", write("a.csv", 0), "--config", down, "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "10 emitted" in out and "10 not yet acknowledged, kept in" in out
    up = config(kafka_broker.bootstrap)
    assert main(["outcomes", "load", write("b.csv", 10), "--config", up, "--timeout", "60"]) == 0
    records = kafka_broker.consume(topics["topic_outcomes"], 20)
    assert {orjson.loads(r.value)["decision_id"] for r in records} == {
        f"call{i}/0" for i in range(20)
    }
