"""Two monitor instances sharing the stream report exactly what one reports; continuous mode alerts once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.config import load_settings
from sidecar.monitor.runner import Continuous, report_once
from tests.eventlib import validate_event
from tests.monitor.gen import generate
from tests.monitor.test_report import write_config, write_folder, write_reference


def _without_time(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rep.items() if k != "generated_at"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = generate(4000, seed=21, shift=0.3)
    write_folder(tmp_path / "events", data.events)
    write_reference(tmp_path / "reference.parquet", generate(2000, seed=4))
    return tmp_path


def _settings(root: Path, **monitor: Any) -> Any:
    write_config(
        root / "m.toml", root / "reference.parquet", state_dir=str(root / "state"), **monitor
    )
    return load_settings(root / "m.toml")


def test_two_instances_merge_to_what_one_reports(folder: Path) -> None:
    one = report_once(_settings(folder), folder / "events")
    second = Continuous(_settings(folder, instance=1, instances=2), folder / "events")
    first = Continuous(_settings(folder, instance=0, instances=2), folder / "events")
    assert second.step() is None  # only instance 0 reports
    merged = first.step()
    assert merged is not None
    # Each read about half the decisions; together all of them, and the same figures.
    halves = [
        second.local_state().traffic["decisions"],
        first.local_state().traffic["decisions"],
    ]
    assert sum(halves) == 4000 and min(halves) > 1500
    assert _without_time(merged) == _without_time(one)
    on_disk = orjson.loads((folder / "state" / "report.json").read_bytes())
    assert _without_time(on_disk) == _without_time(one)


def test_continuous_mode_follows_new_events_and_alerts_once(folder: Path) -> None:
    mon = Continuous(_settings(folder), folder / "events")
    rep = mon.step()
    assert rep is not None and rep["traffic"]["decisions"] == 4000
    alerts_dir = folder / "events" / "sidecar.alerts"
    first = [
        orjson.loads(x)
        for p in sorted(alerts_dir.glob("*.jsonl"))
        for x in p.read_bytes().splitlines()
    ]
    assert first and {a["attribute"] for a in first if a["rule"] == "four_fifths"} == {"gender"}
    assert all(a["event_type"] == "alert" and a["window"] != "cumulative" for a in first)
    for a in first:
        validate_event(a)
    # More events arrive (a later day); the same firings are not emitted again.
    later = generate(500, seed=22, shift=0.3)
    for ev in later.events:
        if "decision_id" in ev:
            ev["decision_id"] = "late-" + ev["decision_id"]
    write_folder(folder / "events", later.events)
    rep = mon.step()
    assert rep is not None and rep["traffic"]["decisions"] == 4500
    again = [
        orjson.loads(x)
        for p in sorted(alerts_dir.glob("*.jsonl"))
        for x in p.read_bytes().splitlines()
    ]
    ids = [a["event_id"] for a in again]
    assert len(ids) == len(set(ids)) and len(again) >= len(first)
    # A restarted monitor knows what was emitted.
    mon.alerts_out.close()
    restarted = Continuous(_settings(folder), folder / "events")
    restarted.step()
    restarted.alerts_out.close()
    final = [x for p in sorted(alerts_dir.glob("*.jsonl")) for x in p.read_bytes().splitlines()]
    assert len(final) == len(again)
    from prometheus_client import generate_latest

    text = generate_latest(restarted.registry).decode()
    assert 'sidecar_monitor_alert{attribute="gender"' in text
    assert 'sidecar_monitor_events{kind="decisions"} 4500.0' in text


def test_the_command_runs_continuously_until_terminated(folder: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.servers import free_port, http_get, wait_until

    port = free_port()
    settings = _settings(folder, interval_s=0.2, source=str(folder / "events"), metrics_port=port)
    report = settings.monitor.state_dir / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "monitor", "--config", str(folder / "m.toml")],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(report.is_file, timeout_s=60, what="the monitor's first report", interval_s=0.1)
        wait_until(
            lambda: orjson.loads(report.read_bytes())["traffic"]["decisions"] == 4000,
            timeout_s=30,
            what="every decision read",
            interval_s=0.1,
        )
        # Prometheus scrapes the figures and the open alerts.
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        text = body.decode()
        assert status == 200 and 'sidecar_monitor_events{kind="decisions"} 4000.0' in text
        assert 'sidecar_monitor_alert{attribute="gender"' in text
        assert 'sidecar_monitor_figure{attribute="gender",bound="lower",group="C"' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
