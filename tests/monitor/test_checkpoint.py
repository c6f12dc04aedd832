"""Checkpoints: a shard restored from its checkpoint goes on exactly as if never stopped, the
folder store keeps a shard's offsets with its state, and two writers of one shard are refused."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.monitor.checkpoint import Checkpoint, capture, decode_resume, encode_resume, restore
from sidecar.monitor.ingest import Ingest
from sidecar.monitor.runner import Continuous, report_once
from sidecar.monitor.state import State
from sidecar.monitor.store import FolderStore, StaleShard
from tests.monitor.gen import FEATURES, generate
from tests.monitor.test_report import write_config, write_folder, write_reference


def _ingest() -> Ingest:
    return Ingest(
        State(feature_names=list(FEATURES), edges=[[0.0, 1.0]] * len(FEATURES)),
        window_s=86_400,
        class_labels=["default", "repaid"],
        favourable_label="repaid",
        max_tracked=5000,
    )


def _through_storage(ck: Checkpoint) -> Checkpoint:
    # As the stores write and read it: JSON for the state, compressed JSON for the rest.
    return Checkpoint(
        ck.shard,
        json.loads(json.dumps(ck.state)),
        decode_resume(encode_resume(ck.resume)),
        dict(ck.offsets),
        json.loads(json.dumps(ck.meta)),
    )


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.8])
def test_a_shard_restored_from_its_checkpoint_goes_on_as_if_never_stopped(cut: float) -> None:
    events = generate(1500, seed=31, shift=0.3).events
    # Shuffled: outcomes, reviews and explanations before and after their decision, on
    # both sides of the cut; and some delivered twice.
    rng = random.Random(7)
    events = events + rng.sample(events, 200)
    rng.shuffle(events)
    at = int(len(events) * cut)
    whole = _ingest()
    whole.feed(events)
    first = _ingest()
    first.feed(events[:at])
    ck = _through_storage(capture("files-0-of-1", first, {"t/a.jsonl": 123}))
    assert ck.offsets == {"t/a.jsonl": 123}
    again = _ingest()
    restore(again, ck)
    # Events joined across the cut: a decision before it, its outcome after.
    later_ids = {e["decision_id"] for e in events[at:] if e["event_type"] == "outcome"}
    assert later_ids & set(first._index), "the cut must separate decisions from outcomes"
    assert first.snapshot().pending["outcomes"] > 0, "and leave outcomes waiting"
    again.feed(events[at:])
    assert again.snapshot().to_dict() == whole.snapshot().to_dict()
    assert again.waiting_outcomes() == whole.waiting_outcomes()
    assert again.snapshot().traffic["duplicates"] == whole.snapshot().traffic["duplicates"] > 0


def test_a_checkpoint_of_another_version_is_refused() -> None:
    ing = _ingest()
    ck = capture("files-0-of-1", ing, {})
    ck.resume["checkpoint_version"] = 99
    with pytest.raises(ValueError, match="checkpoint version 99"):
        restore(_ingest(), ck)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_reference(tmp_path / "reference.parquet", generate(2000, seed=4))
    return tmp_path


def _settings(root: Path, **monitor: Any) -> Any:
    write_config(
        root / "m.toml", root / "reference.parquet", state_dir=str(root / "state"), **monitor
    )
    return load_settings(root / "m.toml")


def _without_time(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rep.items() if k != "generated_at"}


def test_a_restarted_folder_monitor_resumes_from_its_offsets(root: Path) -> None:
    data = generate(3000, seed=23, shift=0.3)
    rng = random.Random(3)
    events = list(data.events)
    rng.shuffle(events)
    first, second = events[:1800], events[1800:]
    write_folder(root / "all", events)
    write_folder(root / "events", first)
    mon = Continuous(_settings(root), root / "events")
    assert mon.step() is not None
    mon.close()  # killed here: nothing more is written
    ckpt = root / "state" / "files-0-of-1.ckpt"
    assert ckpt.is_file()
    # The files read so far are pruned by the sink; a monitor that started over would miss
    # them, one that read them again on top of its state would count them twice.
    read_files = sorted((root / "events").rglob("*.jsonl"))
    for path in read_files:
        path.unlink()
    write_folder(root / "events", second)
    restarted = Continuous(_settings(root), root / "events")
    rep = restarted.step()
    restarted.close()
    assert rep is not None
    one = report_once(_settings(root), root / "all")
    assert rep["traffic"]["decisions"] == 3000
    assert _without_time(rep) == _without_time(one)
    # The pruned files' offsets went out of the checkpoint with them.
    offsets = FolderStore(root / "state").load("files-0-of-1")
    assert offsets is not None
    assert not {p.relative_to(root / "events").as_posix() for p in read_files} & set(
        offsets.offsets
    )


def test_two_monitors_taking_one_shard_are_refused(root: Path) -> None:
    write_folder(root / "events", generate(300, seed=2).events)
    a = Continuous(_settings(root), root / "events")
    b = Continuous(_settings(root), root / "events")
    c = Continuous(_settings(root), root / "events")
    try:
        a.step()
        with pytest.raises(StaleShard, match=r"monitor\.instance"):
            b.step()
    finally:
        a.close()
        b.close()
    # Running, the monitor stops rather than go on counting another's events.
    c.run()
    assert isinstance(c.failed, StaleShard)


def test_an_old_state_folder_is_not_mistaken_for_checkpoints(root: Path) -> None:
    # Partial states of the previous layout (no offsets) are left alone: reading starts over.
    (root / "state").mkdir()
    (root / "state" / "partial-0-of-1.json").write_text("{}")
    write_folder(root / "events", generate(300, seed=2).events)
    mon = Continuous(_settings(root), root / "events")
    rep = mon.step()
    mon.close()
    assert rep is not None and rep["traffic"]["decisions"] == 300


def test_monitor_topic_outcomes_is_refused_naming_its_replacement(root: Path) -> None:
    write_config(root / "m.toml", root / "reference.parquet", topic_outcomes="x.outcomes")
    with pytest.raises(ConfigError) as err:
        load_settings(root / "m.toml")
    assert "monitor.topic_outcomes" in str(err.value) and "kafka.topic_outcomes" in str(err.value)
    with pytest.raises(
        ConfigError, match=r"SIDECAR_MONITOR__TOPIC_OUTCOMES.*kafka\.topic_outcomes"
    ):
        load_settings(environ={"SIDECAR_MONITOR__TOPIC_OUTCOMES": "x.outcomes"})


def test_the_database_store_needs_the_hubs_database_url(root: Path) -> None:
    write_folder(root / "events", generate(50, seed=2).events)
    with pytest.raises(ValueError, match=r"hub\.database_url"):
        Continuous(_settings(root, state_store="database"), root / "events")
