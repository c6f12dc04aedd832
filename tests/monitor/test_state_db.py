"""Monitor states in the hub's database (a real PostgreSQL): instances share nothing but it, a
restart resumes from it, two writers of one shard are refused, and the hub serves the dashboard
from it (in headless Chromium)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from playwright.sync_api import expect, sync_playwright

from sidecar.config import Settings, load_settings
from sidecar.monitor.runner import Continuous, report_once
from sidecar.monitor.store import StaleShard
from tests.monitor.gen import generate
from tests.monitor.test_report import write_config, write_folder, write_reference
from tests.postgres_server import hub_database, postgres_server
from tests.review.test_console_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS
from tests.servers import http_get

__all__ = ["hub_database", "postgres_server"]

AUDITOR = "audrey-token-0123456789"
REVIEWER = "rob-token-0123456789ab"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_reference(tmp_path / "reference.parquet", generate(2000, seed=4))
    return tmp_path


def _settings(root: Path, url: str, group: str, **monitor: Any) -> Settings:
    write_config(
        root / "m.toml",
        root / "reference.parquet",
        state_dir=str(root / "state"),
        state_store="database",
        group_id=group,
        **monitor,
    )
    return load_settings(
        root / "m.toml",
        environ={"SIDECAR_HUB__DATABASE_URL": url},
        overrides={
            "hub": {"port": 0},
            "auth": {
                "tokens": {
                    AUDITOR: {"name": "audrey", "role": "auditor"},
                    REVIEWER: {"name": "rob", "role": "reviewer"},
                }
            },
        },
    )


def _without_time(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rep.items() if k != "generated_at"}


def _rows(url: str, group: str) -> dict[str, dict[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT shard, offsets FROM monitor_state WHERE monitor = %s", (group,)
        ).fetchall()
    return {str(r[0]): r[1] for r in rows}


@pytest.fixture
def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def test_two_instances_share_nothing_but_the_database(
    root: Path, hub_database: str, group: str
) -> None:
    write_folder(root / "events", generate(3000, seed=21, shift=0.3).events)
    one = report_once(_settings(root, hub_database, group), root / "events")
    second = Continuous(
        _settings(root, hub_database, group, instance=1, instances=2), root / "events"
    )
    first = Continuous(
        _settings(root, hub_database, group, instance=0, instances=2), root / "events"
    )
    try:
        assert second.step() is None
        merged = first.step()
    finally:
        second.close()
        first.close()
    assert merged is not None and _without_time(merged) == _without_time(one)
    # No checkpoint file: the states and the offsets that go with them are rows.
    assert not list((root / "state").glob("*.ckpt"))
    rows = _rows(hub_database, group)
    assert set(rows) == {"files-0-of-2", "files-1-of-2"}
    assert all(offsets and all(v > 0 for v in offsets.values()) for offsets in rows.values())


def test_a_restart_resumes_from_the_database_and_a_second_writer_is_refused(
    root: Path, hub_database: str, group: str
) -> None:
    events = generate(2000, seed=5, shift=0.3).events
    write_folder(root / "all", events)
    write_folder(root / "events", events[:1200])
    mon = Continuous(_settings(root, hub_database, group), root / "events")
    mon.step()
    # The database drops the monitor's connection (a restart, a failover): it reconnects.
    with psycopg.connect(hub_database, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'sidecar-monitor' AND datname = current_database()"
        )
    write_folder(root / "events", events[1200:1300])
    assert mon.step() is not None
    mon.close()
    for path in (root / "events").rglob("*.jsonl"):
        path.unlink()  # read, then pruned: only the checkpoint remembers them
    write_folder(root / "events", events[1300:])
    other = Continuous(_settings(root, hub_database, group), root / "events")
    restarted = Continuous(_settings(root, hub_database, group), root / "events")
    try:
        rep = restarted.step()
        assert rep is not None
        one = report_once(_settings(root, hub_database, group), root / "all")
        assert _without_time(rep) == _without_time(one)
        # `other` loaded the same shard before `restarted` wrote it: its write is refused,
        # and the stored state is still the restarted instance's.
        with pytest.raises(StaleShard, match="files-0-of-1"):
            other.step()
    finally:
        other.close()
        restarted.close()
    again = Continuous(_settings(root, hub_database, group), root / "events")
    try:
        rep = again.step()
    finally:
        again.close()
    assert rep is not None and rep["traffic"]["decisions"] == 2000


@pytest.fixture
def served_hub(root: Path, hub_database: str, group: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Two monitor instances' states in the database, and a hub over it serving its app."""
    from sidecar.control.server import ControlPlaneThread
    from sidecar.hub.service import Hub

    write_folder(root / "events", generate(3000, seed=21, shift=0.3).events)
    reports = []
    for i in (1, 0):
        mon = Continuous(
            _settings(root, hub_database, group, instance=i, instances=2), root / "events"
        )
        reports.append(mon.step())
        mon.close()
    assert reports[1] is not None
    hub = Hub(_settings(root, hub_database, group, instances=2))
    # The HTTP app only: the monitor's states are what the page reads, not the hub's ingest.
    server = ControlPlaneThread(hub.app, hub._sock, housekeeping=[], on_exit=lambda: None)
    server.start()
    try:
        yield hub.url, reports[1]
    finally:
        server.stop()
        hub.pool.close()
        hub._sock.close()


def test_the_hub_serves_the_dashboard_from_the_merged_states(
    served_hub: tuple[str, dict[str, Any]],
) -> None:
    url, monitor_report = served_hub
    assert http_get(url + "/monitor")[0] == 401
    assert http_get(url + "/monitor", REVIEWER)[0] == 403
    status, body = http_get(url + "/monitor/report.json", AUDITOR)
    assert status == 200
    assert _without_time(orjson.loads(body)) == _without_time(monitor_report)
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: install Debian's browser (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        ctx = browser.new_context(
            viewport={"width": 1440, "height": 900},
            extra_http_headers={"authorization": f"Bearer {AUDITOR}"},
        )
        page = ctx.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("requestfailed", lambda r: problems.append(f"failed {r.url}"))
        external: list[str] = []
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(url) else None)
        page.goto(url + "/monitor")
        expect(page.locator("h1")).to_contain_text("Monitor")
        groups = monitor_report["cumulative"]["attributes"]["gender"]["groups"]
        attributes = monitor_report["cumulative"]["attributes"]
        # One ratio chart per attribute, each with its 0.8 line.
        expect(page.locator("svg.ratio line.threshold")).to_have_count(len(attributes))
        expect(page.locator("svg.over-time polyline.line").first).to_be_visible()
        expect(page.locator("svg.psi rect.bar")).to_have_count(
            len(monitor_report["cumulative"]["drift"]["features"])
        )
        expect(page.locator("#alerts")).to_be_visible()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "hub-monitor.png"), full_page=True)
        browser.close()
    assert problems == [] and external == [] and len(groups) >= 2
