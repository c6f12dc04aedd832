"""The demo model behind the sidecar (files sink), traffic with group attributes, outcomes
arriving late, `sidecar monitor report` over the folder, and the dashboard in headless Chromium
(saved as var/screenshots/monitor.png)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from playwright.sync_api import expect, sync_playwright

from sidecar.cli import main
from sidecar.demo.data import generate as demo_rows
from sidecar.demo.model import model_settings
from sidecar.demo.process import ModelServerProcess
from sidecar.sinks.events import rfc3339
from tests.integration.test_service_e2e import _post, _v2
from tests.monitor.test_events_e2e_helpers import events_of
from tests.review.test_console_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS
from tests.servers import http_get, running_sidecar

AUDITOR = "monitor-auditor-token-0123456789"
WRITER = "monitor-outcome-writer-token-0123"
DAY = 86_400


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    with ModelServerProcess() as server:
        yield server.url


def test_traffic_outcomes_report_and_dashboard(model_server: str, tmp_path: Path) -> None:
    model = model_settings()
    sections: dict[str, Any] = {
        "model": model,
        "sampling": {"rate": 0.5},
        "auth": {
            "tokens": {
                AUDITOR: {"name": "ann", "role": "auditor"},
                WRITER: {"name": "lender", "role": "outcome_writer"},
            }
        },
        "monitor": {
            "min_group_size": 20,
            "state_dir": str(tmp_path / "monitor"),
            "interval_s": 0.001,
        },
    }
    data = demo_rows(400, seed=31)
    with running_sidecar(model_server, **sections) as svc:
        for i in range(0, 400, 4):
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
        folder = Path(svc.settings.sink.directory)
        decisions = events_of(folder, "sidecar.decisions")
        assert len(decisions) == 400
        # Ground truth learned a month later, posted as a lender's system would.
        labels = model["class_labels"]
        truth = {}
        items = []
        for k, d in enumerate(decisions[::2]):
            label = labels[k % 2]
            truth[d["decision_id"]] = label
            items.append(
                {
                    "decision_id": d["decision_id"],
                    "outcome": label,
                    "observed_at": rfc3339(time.time() + 30 * DAY),
                }
            )
        posted = httpx.post(
            f"{svc.control_url}/outcomes",
            json={"outcomes": items},
            headers={"authorization": f"Bearer {WRITER}"},
            timeout=30,
        )
        assert posted.status_code == 200, posted.text
        assert svc.pipeline.drain(10)
        assert len(events_of(folder, "sidecar.outcomes")) == 200

        config = tmp_path / "monitor.toml"
        config.write_text(
            "[model]\n"
            + "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in model.items())
            + "[monitor]\nmin_group_size = 20\n"
        )
        report = tmp_path / "report.json"
        argv = ["monitor", "report", "--config", str(config), "--events", str(folder)]
        assert main([*argv, "--format", "json", "--out", str(report)]) == 0
        rep = orjson.loads(report.read_bytes())
        t = rep["traffic"]
        assert t["decisions"] == 400 and t["outcomes"] == 200 and t["waiting"]["outcomes"] == 0
        assert t["explanations"] == len(events_of(folder, "sidecar.explanations")) > 0
        groups = rep["cumulative"]["attributes"]["gender"]["groups"]
        assert groups["F"]["count"] == groups["M"]["count"] == 200
        assert groups["F"]["outcomes"] + groups["M"]["outcomes"] == 200
        fav = model["favourable_label"]
        # The selection rate is the share of favourable predictions, as the decisions say.
        by_gender: dict[str, list[int]] = {"F": [], "M": []}
        for d in decisions:
            pred = d["prediction"]
            label = pred if isinstance(pred, str) else labels[int(pred)]
            by_gender[d["group_attributes"]["gender"]].append(int(label == fav))
        for g, ys in by_gender.items():
            assert groups[g]["selection_rate"]["value"] == pytest.approx(
                sum(ys) / len(ys), abs=1e-12
            )
        assert rep["model"]["artifact_sha256"].startswith("sha256:")
        assert set(rep["cumulative"]["drift"]["features"]) == set(model["feature_names"])

        # The dashboard: auditors only; charts drawn on the server.
        assert http_get(svc.control_url + "/monitor")[0] == 401
        status, body = http_get(svc.control_url + "/monitor/report.json", AUDITOR)
        assert status == 200 and orjson.loads(body)["traffic"]["decisions"] == 400
        if shutil.which(CHROMIUM) is None:
            pytest.fail(
                f"{CHROMIUM} not found: install Debian's browser (apt-get install chromium)"
            )
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
            page.on(
                "request",
                lambda r: external.append(r.url) if not r.url.startswith(svc.control_url) else None,
            )
            page.goto(svc.control_url + "/monitor")
            expect(page.locator("h1")).to_contain_text("Monitor")
            expect(page.locator("svg.ratio rect.bar")).to_have_count(2)
            expect(page.locator("svg.ratio line.threshold")).to_have_count(1)
            expect(page.locator("svg.over-time polyline.line")).to_have_count(2)
            expect(page.locator("svg.psi rect.bar")).to_have_count(len(model["feature_names"]))
            expect(page.locator("#alerts")).to_be_visible()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "monitor.png"), full_page=True)
            browser.close()
        assert problems == [] and external == []
