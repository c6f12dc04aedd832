"""Shared by the outcomes tests: a V2 model upstream, calls through the proxy, the files sink's events."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from sidecar.service import Service
from tests.servers import RecordingUpstream, jsonl_events, recording_upstream

LABELS = ["default", "repaid"]
WRITER = "outcome-writer-token-0123456789"
ADMIN = "admin-token-0123456789abcdef"
REVIEWER = "reviewer-token-0123456789abcd"
AUDITOR = "auditor-token-0123456789abcde"
TOKENS = {
    WRITER: {"name": "etl", "role": "outcome_writer"},
    ADMIN: {"name": "root", "role": "admin"},
    REVIEWER: {"name": "rita", "role": "reviewer"},
    AUDITOR: {"name": "aldo", "role": "auditor"},
}
MODEL = {"class_labels": LABELS, "favourable_label": "repaid"}


@contextmanager
def v2_model() -> Iterator[RecordingUpstream]:
    """A V2 model server that answers each row with probabilities [0.3, 0.7]."""
    with recording_upstream() as up:

        @up.route("/v2/models/credit/infer")
        async def infer(request: web.Request) -> web.Response:
            rows = orjson.loads(request["body"])["inputs"][0]["shape"][0]
            out = {
                "model_name": "credit",
                "outputs": [
                    {
                        "name": "probabilities",
                        "shape": [rows, 2],
                        "datatype": "FP32",
                        "data": [0.3, 0.7] * rows,
                    }
                ],
            }
            return web.json_response(out)

        yield up


def infer(svc: Service, rows: int = 1, groups: Any = None) -> str:
    """One V2 call through the proxy; returns its call id (x-decision-id)."""
    body: dict[str, Any] = {
        "inputs": [
            {"name": "input", "shape": [rows, 2], "datatype": "FP32", "data": [1.0, 2.0] * rows}
        ]
    }
    if groups is not None:
        body["parameters"] = {"group_attributes": groups}
    p = urlsplit(svc.proxy_url)
    c = http.client.HTTPConnection(p.hostname, p.port, timeout=10)
    try:
        c.request("POST", "/v2/models/credit/infer", body=orjson.dumps(body))
        r = c.getresponse()
        r.read()
        assert r.status == 200
        call_id = r.getheader("x-decision-id")
        assert call_id
        return call_id
    finally:
        c.close()


def read_events(directory: Path, topic: str) -> list[dict[str, Any]]:
    """Every event the files sink wrote under `directory/topic/`, in file order."""
    return jsonl_events(directory / topic)
