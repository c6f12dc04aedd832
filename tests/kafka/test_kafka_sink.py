"""The Kafka sink against a real broker: contents, headers, outages, restarts, a full spool."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.metrics import Registry
from sidecar.sinks import events
from sidecar.sinks.spool_format import HEADER
from tests.eventlib import make_decision, validate_event
from tests.kafka.conftest import kafka_settings
from tests.kafka_broker import KafkaBroker, dead_bootstrap

CE_HEADERS = {"ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "ce_subject"}


def metric(reg: Registry, name: str) -> float:
    for line in reg.render().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def bodies(records: list[Any]) -> dict[str, dict[str, Any]]:
    """event_id -> body, de-duplicated as a consumer would."""
    return {(b := orjson.loads(r.value))["event_id"]: b for r in records}


def publish_decisions(sink: Any, start: int, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        body = events.decision_event(make_decision(i))
        assert sink.publish("decision", body["decision_id"], body)
        out.append(body)
    return out


def explanation(i: int) -> dict[str, Any]:
    return {
        "model_version": "3",
        "explainer": "treeshap.path_dependent",
        "explainer_version": "1",
        "output_space": "margin",
        "feature_names": ["age", "income", "debt_ratio", "n"],
        "base_values": [-0.4],
        "contributions": [[0.1, -0.2, 0.7, i / 100]],
        "additivity_error": 0.0,
        "cache_hit": False,
        "background_hash": None,
        "top": [{"feature": "debt_ratio", "value": 0.31, "contribution": 0.7}],
        "margin": [0.2 + i / 100],
        "fidelity": "unknown",
        "fidelity_detail": None,
    }


def test_events_arrive_once_each_with_cloudevents_headers(
    tmp_path: Path, kafka_broker: KafkaBroker, kafka_topics: dict[str, str], make_sink: Any
) -> None:
    n = 300
    sink, reg = make_sink(kafka_settings(tmp_path, kafka_broker.bootstrap, kafka_topics))
    sent = publish_decisions(sink, 0, n)
    for i in range(0, n, 10):
        d = make_decision(i)
        assert sink.publish(
            "explanation", d.decision_id, events.explanation_event(d, explanation(i))
        )
    review = events.review_event(
        decision_id="req000003/0",
        action="decided",
        reason="override: confidence 0.55 < 0.6",
        reviewer="ana",
        outcome="0",
        previous_audit_hash="0" * 64,
        verdict="override",
    )
    assert sink.publish("review", "req000003/0", review)

    got = kafka_broker.consume(kafka_topics["topic_decisions"], n)
    assert len(got) == n  # no loss, and no duplicate on a healthy run
    by_id = bodies(got)
    assert by_id == {b["event_id"]: b for b in sent}
    for rec in got:
        headers = dict(rec.headers)
        body = orjson.loads(rec.value)
        validate_event(body)
        assert headers.keys() >= CE_HEADERS
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_id"].decode() == body["event_id"]
        assert headers["ce_type"] == b"org.explaining-sidecar.decision.v1"
        assert headers["ce_time"].decode() == body["time"]
        assert headers["content-type"] == b"application/json"
        assert rec.key.decode() == body["decision_id"] == headers["ce_subject"].decode()
    # One partition, so the topic keeps publish order.
    assert [orjson.loads(r.value)["decision_id"] for r in got] == [b["decision_id"] for b in sent]

    expl = kafka_broker.consume(kafka_topics["topic_explanations"], n // 10)
    assert len(bodies(expl)) == n // 10
    for rec in expl:
        validate_event(orjson.loads(rec.value))
    reviews = kafka_broker.consume(kafka_topics["topic_reviews"], 1)
    assert [orjson.loads(r.value) for r in reviews] == [review]

    assert sink.spool.wait_acked(sink.spool.next_seq, 10)
    assert metric(reg, "sidecar_events_acked_total") == n + n // 10 + 1
    assert metric(reg, "sidecar_spool_lag_events") == 0
    assert metric(reg, "sidecar_producer_errors_total") == 0


@pytest.mark.skipif(
    shutil.which("kcat") is None, reason="kcat not installed (apt-get install kcat)"
)
def test_kcat_reads_the_wire_format(
    tmp_path: Path, kafka_broker: KafkaBroker, kafka_topics: dict[str, str], make_sink: Any
) -> None:
    sink, _ = make_sink(kafka_settings(tmp_path, kafka_broker.bootstrap, kafka_topics))
    sent = publish_decisions(sink, 0, 20)
    assert sink.spool.wait_acked(20, 30)
    topic = kafka_topics["topic_decisions"]
    out = subprocess.run(
        ["kcat", "-b", kafka_broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    msgs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(msgs) == 20
    for msg, body in zip(msgs, sent, strict=True):
        # kcat -J lists headers as a flat [name, value, name, value, ...] array.
        h = dict(zip(msg["headers"][::2], msg["headers"][1::2], strict=True))
        assert h["ce_id"] == body["event_id"]
        assert h["ce_type"] == "org.explaining-sidecar.decision.v1"
        assert h["ce_specversion"] == "1.0" and h["content-type"] == "application/json"
        assert msg["key"] == body["decision_id"]
        assert json.loads(msg["payload"]) == body


def test_broker_down_mid_load_then_back_loses_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker, kafka_topics: dict[str, str], make_sink: Any
) -> None:
    # A small spool with the block policy: the outage fills it and the publisher waits.
    settings = kafka_settings(
        tmp_path,
        kafka_broker.bootstrap,
        kafka_topics,
        max_bytes=256 * 1024,
        segment_bytes=32 * 1024,
        on_full="block",
    )
    sink, reg = make_sink(settings)
    first = publish_decisions(sink, 0, 200)
    assert sink.spool.wait_acked(200, 30)
    kafka_broker.stop()
    try:
        rest: list[dict[str, Any]] = []
        t = threading.Thread(target=lambda: rest.extend(publish_decisions(sink, 200, 2000)))
        t.start()
        while sink.spool.waiting == 0:  # the spool fills while the broker is away
            t.join(0.01)
            assert t.is_alive()
        assert metric(reg, "sidecar_spool_lag_events") > 0
    finally:
        kafka_broker.start()
    t.join(120)
    assert not t.is_alive()
    assert sink.spool.wait_acked(sink.spool.next_seq, 120)
    got = kafka_broker.consume(kafka_topics["topic_decisions"], 2200, 120)
    by_id = bodies(got)
    assert set(by_id) == {b["event_id"] for b in first + rest}
    assert metric(reg, 'sidecar_events_dropped_total{reason="spool_full"}') == 0
    assert metric(reg, "sidecar_spool_blocked_seconds_total") > 0
    # Replay keeps order: first appearances follow publish order.
    order: list[str] = []
    for rec in got:
        eid = dict(rec.headers)["ce_id"].decode()
        if eid not in order:
            order.append(eid)
    assert order == [b["event_id"] for b in first + rest]


def test_spool_left_by_an_earlier_run_is_replayed(
    tmp_path: Path, kafka_broker: KafkaBroker, kafka_topics: dict[str, str], make_sink: Any
) -> None:
    down, reg_down = make_sink(kafka_settings(tmp_path, dead_bootstrap(), kafka_topics))
    sent = publish_decisions(down, 0, 500)
    down.close(0.5)
    assert metric(reg_down, "sidecar_events_acked_total") == 0
    assert metric(reg_down, "sidecar_producer_connected") == 0

    up, reg = make_sink(kafka_settings(tmp_path, kafka_broker.bootstrap, kafka_topics))
    assert up.spool.wait_acked(500, 60)
    got = kafka_broker.consume(kafka_topics["topic_decisions"], 500)
    assert set(bodies(got)) == {b["event_id"] for b in sent}
    assert metric(reg, "sidecar_events_replayed_total") == 500
    # Acknowledged segments are gone: nothing to replay a second time.
    up.close(2.0)
    assert metric(reg, "sidecar_spool_lag_events") == 0


def test_full_spool_drops_newest_counts_and_sends_a_gap_record(
    tmp_path: Path, kafka_broker: KafkaBroker, kafka_topics: dict[str, str], make_sink: Any
) -> None:
    small = {"max_bytes": 64 * 1024, "segment_bytes": 16 * 1024, "on_full": "drop_newest"}
    down, reg_down = make_sink(kafka_settings(tmp_path, dead_bootstrap(), kafka_topics, **small))
    accepted: list[dict[str, Any]] = []
    for i in range(1000):
        body = events.decision_event(make_decision(i))
        if down.publish("decision", body["decision_id"], body):
            accepted.append(body)
    dropped = 1000 - len(accepted)
    assert dropped > 0
    assert metric(reg_down, 'sidecar_events_dropped_total{reason="spool_full"}') == dropped
    assert down.ready()  # a full spool is not a failure of the sidecar
    down.close(0.5)

    make_sink(kafka_settings(tmp_path, kafka_broker.bootstrap, kafka_topics, **small))
    got = kafka_broker.consume(kafka_topics["topic_decisions"], len(accepted))
    by_id = bodies(got)
    assert {b["event_type"] for b in by_id.values()} == {"decision"}
    assert set(by_id) == {b["event_id"] for b in accepted}
    # The gap record went on its own topic, keyed by its own id, naming every lost decision.
    gap_recs = kafka_broker.consume(kafka_topics["topic_gaps"], 1)
    gaps = list(bodies(gap_recs).values())
    for g in gaps:
        validate_event(g)
        assert g["reason"] == "spool_full"
        assert dict(gap_recs[0].headers)["ce_type"] == b"org.explaining-sidecar.gap.v1"
    assert sum(g["dropped"] for g in gaps) == dropped
    assert {"decision"} == {k for g in gaps for k in g["by_kind"]}
    lost = {i for g in gaps for i in g["decision_ids"]}
    made = {events.decision_event(make_decision(i))["decision_id"] for i in range(1000)}
    assert lost == made - {b["decision_id"] for b in accepted}
    assert gap_recs[0].key.decode() == orjson.loads(gap_recs[0].value)["event_id"]


def test_corrupted_spool_is_recovered_from(
    tmp_path: Path, kafka_broker: KafkaBroker, kafka_topics: dict[str, str], make_sink: Any
) -> None:
    down, _ = make_sink(kafka_settings(tmp_path, dead_bootstrap(), kafka_topics))
    sent = publish_decisions(down, 0, 200)
    down.close(0.5)
    seg = next(tmp_path.glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    size = len(raw) // 200  # records are about the same size: hit one near the middle
    raw[100 * size + HEADER.size + 40] ^= 0x5A
    raw += b"\x50\x53torn-tail-of-a-crash"
    seg.write_bytes(bytes(raw))

    up, reg = make_sink(kafka_settings(tmp_path, kafka_broker.bootstrap, kafka_topics))
    later = publish_decisions(up, 200, 10)  # the sidecar keeps working
    assert up.spool.wait_acked(up.spool.next_seq, 60)
    got = bodies(kafka_broker.consume(kafka_topics["topic_decisions"], 209))
    want = {b["event_id"] for b in sent + later}
    assert len(want - set(got)) == 1  # exactly the damaged record is lost
    assert set(got) <= want
    assert metric(reg, "sidecar_spool_corrupt_total") >= 2  # the torn tail and the bad record
