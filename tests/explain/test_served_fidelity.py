"""Online fidelity: an artifact that is not the served model is noticed, counted, shown in
lookup, metrics and the explanation event, and reported by /readyz."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from explainers.served import compare_served
from sidecar.demo.model import model_settings
from sidecar.demo.process import ModelServerProcess
from sidecar.service import Service
from tests.review.review_helpers import ALICE, TOKENS, bearer
from tests.servers import RecordingUpstream, jsonl_events, running_sidecar, wait_until

ROW = [34.0, 78.9, 0.102, 120.0, 1.0, 47.8, 2.2, 0.359, 2.0, 0.0]
INFER = "/v2/models/credit/infer"


def test_compare_served_cases() -> None:
    match = compare_served([0.25], "logistic", 1, [0.7501, 0.2499], 1e-3)
    assert match.fidelity == "match" and match.detail is not None
    assert match.detail["compared"] == "probabilities"
    assert match.detail["explained"] == [0.75, 0.25] and match.detail["served"] == [0.7501, 0.2499]
    off = compare_served([0.973], "logistic", 1, [0.9555, 0.0445], 1e-3)
    assert off.fidelity == "mismatch" and off.detail["max_diff"] == pytest.approx(0.9285)  # type: ignore[index]
    # Three classes served, two explained: a different model.
    assert compare_served([0.3], "logistic", 0, [0.2, 0.3, 0.5], 1e-3).fidelity == "mismatch"
    # Regression and log links: the number itself, relative above 1.
    assert compare_served([1000.4], "identity", 1000.0, None, 1e-3).fidelity == "match"
    assert compare_served([1002.0], "exp", 1000.0, None, 1e-3).fidelity == "mismatch"
    assert compare_served([2.0, 3.0], "identity", [2.0, 3.0], None, 1e-3).fidelity == "match"
    # A label alone, or nothing numeric, cannot be compared.
    assert compare_served([0.9], "logistic", "default", None, 1e-3).fidelity == "unknown"
    assert compare_served([0.9], "identity", True, None, 1e-3).fidelity == "unknown"
    assert compare_served([0.9], "identity", float("nan"), None, 1e-3).fidelity == "unknown"


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    with ModelServerProcess() as server:
        yield server.url


def _v2(rows: list[list[float]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
        ]
    }


def _sidecar(url: str, **explainer: Any) -> Any:
    return running_sidecar(
        url,
        model=model_settings(),
        sampling={"rate": 1.0, "low_confidence_below": None},
        auth={"tokens": TOKENS},
        explainer=explainer,
    )


def _lookup(svc: Service, decision_id: str) -> dict[str, Any]:
    r = httpx.get(f"{svc.control_url}/decisions/{decision_id}", headers=bearer(ALICE), timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _metrics(svc: Service) -> str:
    return httpx.get(f"{svc.control_url}/metrics", timeout=10).text


def _explained(svc: Service, n: int) -> list[dict[str, Any]]:
    folder = Path(svc.settings.sink.directory) / "sidecar.explanations"

    wait_until(lambda: len(jsonl_events(folder)) >= n, what=f"{n} explanation events")
    return jsonl_events(folder)


def test_the_served_model_matches(model_server: str) -> None:
    with _sidecar(model_server) as svc:
        r = httpx.post(svc.proxy_url + INFER, json=_v2([ROW]), timeout=10)
        did = f"{r.headers['x-decision-id']}/0"
        (event,) = _explained(svc, 1)
        body = _lookup(svc, did)
        assert httpx.get(f"{svc.control_url}/readyz", timeout=10).status_code == 200
    assert event["fidelity"] == "match" and event["fidelity_detail"]["compared"] == "probabilities"
    assert body["explanation"]["fidelity"] == "match"


def test_a_different_model_is_marked_counted_and_reported(upstream: RecordingUpstream) -> None:
    # The server answers p(default) = 0.0445 whatever the row: not the artifact's answer.
    answer = orjson.dumps(
        {"outputs": [{"name": "probabilities", "shape": [1, 2], "data": [0.9555, 0.0445]}]}
    )

    @upstream.route(INFER)
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    with _sidecar(upstream.url, mismatch_ready_after=3) as svc:
        ids = []
        for i in range(3):
            assert httpx.get(f"{svc.control_url}/readyz", timeout=10).status_code == 200
            row = [*ROW[:-1], float(i)]
            r = httpx.post(svc.proxy_url + INFER, json=_v2([row]), timeout=10)
            ids.append(f"{r.headers['x-decision-id']}/0")
            _explained(svc, i + 1)
        events = _explained(svc, 3)
        body = _lookup(svc, ids[0])
        metrics = _metrics(svc)
        ready = httpx.get(f"{svc.control_url}/readyz", timeout=10)
    assert [e["fidelity"] for e in events] == ["mismatch"] * 3
    detail = events[0]["fidelity_detail"]
    assert detail["served"] == [0.9555, 0.0445] and detail["explained"] != detail["served"]
    assert body["explanation"]["fidelity"] == "mismatch"
    assert body["explanation"]["fidelity_detail"]["served"] == [0.9555, 0.0445]
    assert 'sidecar_explanation_mismatch_total{model="credit"} 3.0' in metrics
    assert ready.status_code == 503 and ready.json()["checks"]["explainer"] is False


def test_a_different_feature_count_is_caught_on_the_first_call(
    upstream: RecordingUpstream,
) -> None:
    answer = orjson.dumps(
        {"outputs": [{"name": "probabilities", "shape": [1, 2], "data": [0.9, 0.1]}]}
    )

    @upstream.route(INFER)
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    # Five features, no feature_names: nothing but the count tells the models apart.
    sections = model_settings()
    sections.pop("feature_names", None)
    with running_sidecar(
        upstream.url,
        model=sections,
        sampling={"rate": 0.0, "low_confidence_below": None},
        auth={"tokens": TOKENS},
    ) as svc:
        r = httpx.post(svc.proxy_url + INFER, json=_v2([ROW[:5]]), timeout=10)
        did = f"{r.headers['x-decision-id']}/0"
        assert svc.pipeline.drain(5)
        metrics = _metrics(svc)
        body = _lookup(svc, did)
    assert 'sidecar_explanation_mismatch_total{model="credit"} 1.0' in metrics
    assert body["explanation"] is None
    assert "5 features but the model expects 10" in body["explanation_error"]
    assert "fidelity mismatch" in body["explanation_error"]


def test_another_artifact_in_front_of_the_real_server(model_server: str, tmp_path: Path) -> None:
    # The real demo model server, and an artifact that is another model with the same
    # ten features: it loads and passes its own load-time check, yet is not what is served.
    import numpy as np
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, len(ROW))) * 50
    y = (X[:, 1] > 0).astype(int)
    other = tmp_path / "other.json"
    xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(X, y).save_model(str(other))
    model = {**model_settings(), "artifact": str(other), "background": None}
    with running_sidecar(
        model_server,
        model=model,
        sampling={"rate": 1.0, "low_confidence_below": None},
        auth={"tokens": TOKENS},
    ) as svc:
        r = httpx.post(svc.proxy_url + INFER, json=_v2([ROW]), timeout=10)
        did = f"{r.headers['x-decision-id']}/0"
        (event,) = _explained(svc, 1)
        body = _lookup(svc, did)
        metrics = _metrics(svc)
    assert event["fidelity"] == "mismatch"
    probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"]
    assert event["fidelity_detail"]["served"] == pytest.approx(probs)
    assert event["fidelity_detail"]["max_diff"] > 1e-3
    assert body["explanation"]["fidelity"] == "mismatch"
    assert 'sidecar_explanation_mismatch_total{model="credit"} 1.0' in metrics
