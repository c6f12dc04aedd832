from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import orjson
import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.metrics import Registry
from sidecar.sinks import build_sink, events, files
from sidecar.sinks.files import FileSink
from sidecar.sinks.kafka import KafkaSink, producer_config
from sidecar.sinks.null import NullSink
from tests.eventlib import make_decision, validate_event


def lines(directory: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for f in sorted(directory.glob("*.jsonl")):
        out.extend(orjson.loads(line) for line in f.read_bytes().splitlines())
    return out


def _started(tmp_path: Path, rotate_bytes: int, keep_files: int = 3) -> FileSink:
    sink = FileSink(
        tmp_path,
        {"decision": "d", "explanation": "e", "review": "r"},
        Registry(),
        rotate_bytes=rotate_bytes,
        rotate_interval_s=3600,
        keep_files=keep_files,
    )
    sink.start()
    return sink


def _publish(sink: FileSink, ids: range) -> None:
    for i in ids:
        d = make_decision(i)
        sink.publish("decision", d.decision_id, events.decision_event(d))


def test_default_sink_is_files_and_writes_json_lines(tmp_path: Path) -> None:
    reg = Registry()
    settings = load_settings(environ={}, overrides={"sink": {"directory": str(tmp_path)}})
    sink = build_sink(settings, reg)
    assert isinstance(sink, FileSink)
    sink.start()
    for i in range(10):
        d = make_decision(i)
        assert sink.publish("decision", d.decision_id, events.decision_event(d))
    review = events.review_event(
        decision_id="req000001/0",
        action="requested",
        reason="low confidence",
        reviewer=None,
        outcome=None,
        previous_audit_hash=None,
    )
    assert sink.publish("review", "req000001/0", review)
    assert sink.ready()
    sink.close()
    decisions = lines(tmp_path / "sidecar.decisions")
    assert [d["decision_id"] for d in decisions] == [f"req{i:06d}/0" for i in range(10)]
    for body in decisions:
        validate_event(body)
    assert lines(tmp_path / "sidecar.reviews") == [review]
    text = reg.render()
    assert 'sidecar_events_published_total{kind="decision"} 10' in text
    assert "sidecar_events_acked_total 11" in text
    assert not sink.publish("decision", "x", events.decision_event(make_decision()))


def test_files_rotate_and_old_ones_are_pruned(tmp_path: Path) -> None:
    sink = _started(tmp_path, 4096)
    _publish(sink, range(200))
    sink.close()
    files = sorted((tmp_path / "d").glob("*.jsonl"))
    assert len(files) == 3
    assert all(f.stat().st_size <= 4096 for f in files)
    kept = lines(tmp_path / "d")
    # The newest events are the ones kept, in order.
    assert kept[-1]["decision_id"] == "req000199/0"
    ids = [int(str(k["decision_id"])[3:9]) for k in kept]
    assert ids == sorted(ids)


def test_a_file_is_made_durable_every_sync_bytes_not_only_at_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rotation flushed a whole 64 MiB file at once (module doc): the dirty bytes of an
    # open file stay under SYNC_BYTES.
    synced: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(files, "SYNC_BYTES", 8192)
    monkeypatch.setattr(os, "fdatasync", counting)
    sink = _started(tmp_path, 1 << 30)
    _publish(sink, range(200))
    sink.close()
    size = sum(f.stat().st_size for f in (tmp_path / "d").glob("*.jsonl"))
    assert len(synced) == size // 8192 or len(synced) == size // 8192 - 1, (synced, size)
    # Each sync came within one write of the last one's size plus SYNC_BYTES.
    gaps = [b - a for a, b in zip([0, *synced], synced, strict=False)]
    assert synced and all(8192 <= g < 8192 + 2048 for g in gaps), gaps


def test_concurrent_publishers_never_interleave_lines(tmp_path: Path) -> None:
    sink = _started(tmp_path, 1 << 20, keep_files=10)

    def work(base: int) -> None:
        _publish(sink, range(base, base + 300))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert len(lines(tmp_path / "d")) == 1200


def test_unserialisable_event_is_counted_not_raised(tmp_path: Path) -> None:
    reg = Registry()
    sink = FileSink(
        tmp_path, {"decision": "d"}, reg, rotate_bytes=4096, rotate_interval_s=1, keep_files=1
    )
    sink.start()
    assert not sink.publish("decision", "k", {"bad": object()})
    assert 'sidecar_events_dropped_total{reason="invalid"} 1' in reg.render()
    sink.close()


def test_none_sink_discards_and_counts() -> None:
    reg = Registry()
    settings = load_settings(environ={}, overrides={"sink": {"kind": "none"}})
    sink = build_sink(settings, reg)
    assert isinstance(sink, NullSink)
    sink.start()
    assert sink.publish("decision", "k", {"event_id": "e"})
    sink.close()
    assert 'sidecar_events_dropped_total{reason="sink_none"} 1' in reg.render()


def test_kafka_sink_is_built_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"SIDECAR_SINK__KIND": "kafka", "SIDECAR_SPOOL__DIRECTORY": str(tmp_path)},
    )
    assert isinstance(build_sink(settings, Registry()), KafkaSink)


def test_producer_config_passes_security_settings_through(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = load_settings(
        environ={"SIDECAR_KAFKA__SASL_PASSWORD": "pw"},
        overrides={
            "kafka": {
                "bootstrap_servers": "b1:9093, b2:9093",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "sidecar",
                "ssl_cafile": str(ca),
                "compression_type": "gzip",
                "extra": {"metadata_max_age_ms": 60000},
            }
        },
    )
    cfg = producer_config(settings.kafka)
    assert cfg["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert (cfg["security_protocol"], cfg["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == ("sidecar", "pw")
    assert cfg["ssl_cafile"] == str(ca)
    assert cfg["acks"] == "all" and cfg["enable_idempotence"] is True
    assert cfg["compression_type"] == "gzip" and cfg["metadata_max_age_ms"] == 60000


@pytest.mark.parametrize(
    ("kafka", "key"),
    [
        ({"extra": {"no_such_option": 1}}, "kafka.extra.no_such_option"),
        ({"extra": {"acks": 1}}, "kafka.extra.acks"),
        ({"ssl_cafile": "/nonexistent/ca.pem"}, "kafka.ssl_cafile"),
        ({"delivery_timeout_ms": 1000, "request_timeout_ms": 30000}, "kafka.delivery_timeout_ms"),
    ],
)
def test_producer_config_names_the_bad_key(kafka: dict[str, object], key: str) -> None:
    settings = load_settings(environ={}, overrides={"kafka": kafka})
    with pytest.raises(ConfigError, match=re.escape(key)):
        producer_config(settings.kafka)


def test_settings_refuse_sasl_without_mechanism() -> None:
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        load_settings(environ={}, overrides={"kafka": {"security_protocol": "SASL_SSL"}})
