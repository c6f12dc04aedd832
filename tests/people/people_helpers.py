"""A sidecar in front of the demo credit model server, with the demo's reasons and recourse."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import orjson
import pytest

from sidecar.demo.data import generate
from sidecar.demo.model import MODEL_PATH, model_settings, people_settings
from sidecar.demo.process import ModelServerProcess
from sidecar.service import Service
from tests.servers import running_sidecar

CASE, CASE2, REVIEWER, AUDITOR, ADMIN = (
    "case-handler-token-0001",
    "case-handler-token-0002",
    "reviewer-token-000001",
    "auditor-token-0000001",
    "admin-token-000000001",
)
TOKENS = {
    CASE: {"name": "cara", "role": "case_handler"},
    CASE2: {"name": "carl", "role": "case_handler"},
    REVIEWER: {"name": "rita", "role": "reviewer"},
    AUDITOR: {"name": "audrey", "role": "auditor"},
    ADMIN: {"name": "adam", "role": "admin"},
}
FEATURES = list(model_settings()["feature_names"])
N_ROWS = 200


def sections(**extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model_settings(),
        **people_settings(),
        "auth": {"tokens": TOKENS},
        "groups": {
            "derive": {"age_band": {"feature": "age", "bins": [18, 30, 40, 50, 60]}},
        },
        # Nothing sampled: reasons come from on-demand explanations, as for most decisions.
        "sampling": {"rate": 0.0, "low_confidence_below": None},
        "review": {"confidence_below": None},
    }
    for k, v in extra.items():
        out.setdefault(k, {}).update(v)
    return out


@dataclass
class Made:
    """Decisions made through the proxy: the call id, the rows, the model's labels."""

    service: Service
    call_id: str
    rows: list[list[float | None]]
    labels: list[int]  # 1: default (unfavourable), 0: repaid

    def id(self, i: int) -> str:
        return f"{self.call_id}/{i}"

    @property
    def denied(self) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label == 1]

    @property
    def approved(self) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label == 0]

    def get(self, path: str, token: str) -> tuple[int, Any, dict[str, str]]:
        return request(self.service.control_url, "GET", path, token)

    def post(self, path: str, token: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        return request(self.service.control_url, "POST", path, token, body)


def request(
    base: str, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    p = urlsplit(base)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=30)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers["content-type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    raw = r.read()
    c.close()
    ctype = r.getheader("content-type", "")
    parsed: Any = json.loads(raw) if ctype.startswith("application/json") else raw
    return r.status, parsed, {k.lower(): v for k, v in r.getheaders()}


def send_rows(service: Service, rows: list[list[float | None]]) -> tuple[str, list[int]]:
    p = urlsplit(service.proxy_url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=30)
    body = {
        "inputs": [
            {"name": "input", "shape": [len(rows), len(FEATURES)], "datatype": "FP32", "data": rows}
        ]
    }
    c.request(
        "POST", "/v2/models/credit/infer", orjson.dumps(body), {"content-type": "application/json"}
    )
    r = c.getresponse()
    answer = orjson.loads(r.read())
    assert r.status == 200
    call_id = r.getheader("x-decision-id")
    assert call_id
    labels = next(o["data"] for o in answer["outputs"] if o["name"] == "label")
    return call_id, [int(v) for v in labels]


def demo_rows(n: int, seed: int) -> list[list[float | None]]:
    X = generate(n, seed=seed).features
    return [[None if np.isnan(v) else float(v) for v in row] for row in X]


@pytest.fixture(scope="package")
def model_server() -> Iterator[str]:
    with ModelServerProcess() as server:
        yield server.url


@pytest.fixture(scope="package")
def made(model_server: str) -> Iterator[Made]:
    with running_sidecar(model_server, **sections()) as svc:
        rows = demo_rows(N_ROWS, seed=11)
        call_id, labels = send_rows(svc, rows)
        assert svc.pipeline.drain(10)
        m = Made(svc, call_id, rows, labels)
        assert len(m.denied) >= 5, "the sample must hold denied decisions"
        yield m


class Runtime:
    """The demo model run directly with onnxruntime: the check does not trust our trees."""

    def __init__(self) -> None:
        self.session = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])

    def run(
        self, rows: list[list[float | None]]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        x = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float32)
        label, proba = self.session.run(None, {"input": x})
        return label, proba

    def approval(self, rows: list[list[float | None]]) -> npt.NDArray[np.float32]:
        """P(repaid), the favourable outcome, per row."""
        return self.run(rows)[1][:, 0]
