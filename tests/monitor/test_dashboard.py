"""The dashboard routes in-process: roles, the empty state, the page's policy."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from sidecar.config import load_settings
from sidecar.control.app import create_control_app
from sidecar.control.auth import Authenticator, TokenTable
from sidecar.metrics import Registry
from sidecar.monitor.dashboard import create_dashboard_router
from tests.monitor.gen import generate
from tests.monitor.test_report import write_folder

AUDITOR, REVIEWER = "auditor-token-0123456789abcdef", "reviewer-token-0123456789abcdef"


def _client(tmp_path: Path, **monitor: str) -> TestClient:
    settings = load_settings(
        environ={},
        overrides={
            "sink": {"directory": str(tmp_path / "events")},
            "model": {"class_labels": ["default", "repaid"], "favourable_label": "repaid"},
            "monitor": {"state_dir": str(tmp_path / "monitor"), "interval_s": 0.001, **monitor},
            "auth": {
                "tokens": {
                    AUDITOR: {"name": "ann", "role": "auditor"},
                    REVIEWER: {"name": "rob", "role": "reviewer"},
                }
            },
        },
    )
    auth = Authenticator(
        TokenTable.from_settings(settings.auth), settings.auth.group_attribute_roles
    )
    app = create_control_app(
        registry=Registry(),
        ready_checks=[],
        routers=[create_dashboard_router(settings, auth.require("auditor", "admin"))],
    )
    return TestClient(app)


def test_roles_empty_state_and_policy(tmp_path: Path) -> None:
    client = _client(tmp_path)
    assert client.get("/monitor").status_code == 401
    assert (
        client.get("/monitor", headers={"authorization": f"Bearer {REVIEWER}"}).status_code == 403
    )
    ok = {"authorization": f"Bearer {AUDITOR}"}
    empty = client.get("/monitor", headers=ok)
    assert empty.status_code == 200 and "id=empty" in empty.text
    assert client.get("/monitor/report.json", headers=ok).status_code == 404
    write_folder(tmp_path / "events", generate(600, seed=5).events)
    page = client.get("/monitor", headers=ok)
    assert page.status_code == 200 and page.text.count("<svg") >= 3
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "style-src 'sha256-" in csp and "script" not in csp
    body = client.get("/monitor/report.json", headers=ok).json()
    assert body["traffic"]["decisions"] == 600
    # No feature names configured: the stream's are taken, and importance is computed.
    assert set(body["cumulative"]["overall"]["mean_abs_shap"]) == {
        "income",
        "debt_ratio",
        "zip_risk",
    }


def test_a_bad_reference_is_told_on_the_page_not_a_500(tmp_path: Path) -> None:
    client = _client(tmp_path, reference=str(tmp_path / "gone.parquet"))
    write_folder(tmp_path / "events", generate(100, seed=5).events)
    page = client.get("/monitor", headers={"authorization": f"Bearer {AUDITOR}"})
    assert page.status_code == 200
    assert "cannot be computed" in page.text and "monitor.reference" in page.text
