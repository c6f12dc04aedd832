"""The whole service in front of real upstreams: groups, sampling, explanations, review routing."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp import web

from explainers.errors import ExplainerError
from sidecar.config import load_settings
from sidecar.demo.model import META_PATH, MODEL_PATH, load_meta, model_settings
from sidecar.demo.process import ModelServerProcess
from sidecar.service import Service
from tests.servers import RecordingUpstream, jsonl_events, running_sidecar, wait_until

META = load_meta(META_PATH)
ROW = [34.0, 78.9, 0.102, 120.0, 1.0, 47.8, 2.2, 0.359, 2.0, 0.0]


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    with ModelServerProcess() as server:
        yield server.url


def _model_sections(**extra: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {
        "model": model_settings(),
        "sampling": {"rate": 0.0, "low_confidence_below": None},
    }
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    return sections


def _post(svc: Service, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    p = urlsplit(svc.proxy_url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
    c.request("POST", path, body=orjson.dumps(body), headers=headers or {})
    r = c.getresponse()
    r.body = r.read()  # type: ignore[attr-defined]
    return r


def _events(svc: Service, topic: str) -> list[dict[str, Any]]:
    return jsonl_events(Path(svc.settings.sink.directory) / topic)


def _v2(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
        ]
    }
    body.update(extra)
    return body


def test_requested_explanation_is_exact_streamed_and_looked_up(model_server: str) -> None:
    with running_sidecar(model_server, **_model_sections()) as svc:
        plain = _post(svc, "/v2/models/credit/infer", _v2([ROW]))
        asked = _post(svc, "/v2/models/credit/infer", _v2([ROW, ROW[::-1]]), {"x-explain": "1"})
        assert plain.status == asked.status == 200
        rid = asked.getheader("x-decision-id")
        assert svc.pipeline.drain(5)
        assert svc.explain_stage is not None and svc.explain_stage.drain(10)
        again = _post(svc, "/v2/models/credit/infer", _v2([ROW]), {"x-explain": "true"})
        rid2 = again.getheader("x-decision-id")
        wait_until(lambda: len(_events(svc, "sidecar.explanations")) == 3, what="3 explanations")
        explained = _events(svc, "sidecar.explanations")
        decisions = _events(svc, "sidecar.decisions")
    assert [e["decision_id"] for e in explained] == [f"{rid}/0", f"{rid}/1", f"{rid2}/0"]
    for e in explained:
        assert e["additivity_error"] < 1e-6
        assert e["explainer"].startswith("treeshap")
        assert len(e["contributions"][0]) == len(META.feature_names)
    # The same features explained again come from the cache, with the same numbers.
    assert [e["cache_hit"] for e in explained] == [False, False, True]
    assert explained[2]["contributions"] == explained[0]["contributions"]
    by_id = {d["decision_id"]: d for d in decisions}
    assert by_id[f"{rid}/0"]["sampled"] is True
    assert by_id[f"{rid}/0"]["sample_reason"] == "requested"
    assert by_id[f"{plain.getheader('x-decision-id')}/0"]["sampled"] is False


def test_group_attributes_are_recorded_and_never_forwarded(upstream: RecordingUpstream) -> None:
    out = b'{"outputs":[{"name":"probabilities","shape":[1,2],"datatype":"FP32","data":[0.9,0.1]}]}'

    @upstream.route("/v2/models/credit/infer")
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=out, content_type="application/json")

    sections = _model_sections(
        groups={
            "derive": {
                "age_band": {
                    "feature": "age",
                    "bins": [18, 30, 40],
                    "labels": ["18-29", "30-39", "40+"],
                }
            },
            "privacy": {"postcode": "drop"},
        }
    )
    sections["model"].pop("artifact")
    sections["model"].pop("background")
    with running_sidecar(upstream.url, **sections) as svc:
        r = _post(
            svc,
            "/v2/models/credit/infer",
            _v2([ROW], parameters={"group_attributes": {"region": "north"}, "keep": 1}),
            {"x-group-attributes": "gender=F; postcode=AB1", "x-request-id": "g-1"},
        )
        assert r.status == 200 and r.body == out
        assert svc.pipeline.drain(5)
        events = _events(svc, "sidecar.decisions")
    seen = upstream.seen[-1]
    assert b"x-group-attributes" not in {k.lower() for k, _ in seen.raw_headers}
    forwarded = orjson.loads(seen.body)
    assert forwarded["parameters"] == {"keep": 1}
    assert forwarded["inputs"] == _v2([ROW])["inputs"]
    (event,) = events
    assert event["decision_id"] == f"{r.getheader('x-decision-id')}/0"
    assert event["request_id"] == "g-1"
    assert event["group_attributes"] == {"gender": "F", "region": "north", "age_band": "30-39"}


def test_low_confidence_is_flagged_for_review(upstream: RecordingUpstream) -> None:
    def answer(p: float) -> bytes:
        return orjson.dumps(
            {
                "outputs": [
                    {
                        "name": "probabilities",
                        "shape": [1, 2],
                        "datatype": "FP32",
                        "data": [1 - p, p],
                    }
                ]
            }
        )

    answers = iter([answer(0.45), answer(0.02)])

    @upstream.route("/v2/models/credit/infer")
    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=next(answers), content_type="application/json")

    sections = _model_sections(review={"confidence_below": 0.7})
    with running_sidecar(upstream.url, **sections) as svc:
        unsure = _post(svc, "/v2/models/credit/infer", _v2([ROW]))
        sure = _post(svc, "/v2/models/credit/infer", _v2([ROW]))
        assert unsure.getheader("x-review-status") == "queued"
        assert sure.getheader("x-review-status") is None
        assert unsure.body == answer(0.45)
        assert svc.pipeline.drain(5)
        item = svc.review_store.get(f"{unsure.getheader('x-decision-id')}/0")
        reviews = _events(svc, "sidecar.reviews")
    assert item is not None and item.status == "pending" and item.reason == "low_confidence"
    assert [e["action"] for e in reviews] == ["requested"]


def test_unfaithful_or_broken_model_stops_the_start(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(MODEL_PATH.read_bytes()[:1000])
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[proxy]\nport = 0\n[control]\nport = 0\n[model]\nartifact = "{broken}"\n'
        f'[sink]\ndirectory = "{tmp_path / "events"}"\n[review]\ndb_path = "{tmp_path / "r.db"}"\n'
    )
    with pytest.raises(ExplainerError, match=r"model\.artifact"):
        Service(load_settings(config, environ={}))
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "model.artifact" in proc.stderr and "Traceback" not in proc.stderr
