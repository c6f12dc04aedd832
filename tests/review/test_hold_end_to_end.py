"""Hold mode end to end: `sidecar` in front of the real demo model server.

A low-confidence call gets 202 and a ticket instead of the model's answer;
the item reaches the queue with its explanation; a reviewer approves one
call and overrides another through the control plane; the ticket then reads
the final outcome (the model's own answer, byte for byte the same JSON, or
the reviewer's), and the review events and the audit chain record it all.
A confident call passes through untouched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from sidecar.demo.data import generate
from sidecar.demo.model import MODEL_PATH
from sidecar.demo.process import ModelServerProcess
from sidecar.review import audit
from tests.review.review_helpers import ALICE, AUDITOR, FEATURES, TOKENS, bearer, read_events
from tests.servers import running_sidecar, wait_until


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    with ModelServerProcess() as server:
        yield server.url


def pick_rows() -> tuple[list[list[float]], list[float]]:
    """Two rows the model is unsure about (confidence < 0.6) and one it is sure of."""
    x = generate(600, seed=11).features
    x = x[~np.isnan(x).any(axis=1)]
    session = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    _, proba = session.run(None, {session.get_inputs()[0].name: x})
    conf = np.asarray(proba).max(axis=1)
    unsure = [x[i].tolist() for i in np.flatnonzero(conf < 0.6)[:2]]
    sure = x[int(np.argmax(conf))].tolist()
    assert len(unsure) == 2 and conf.max() > 0.9
    return unsure, sure


def infer(row: list[float]) -> dict[str, Any]:
    # A fixed request id: the V2 answer echoes it, so two calls' answers compare equal.
    return {
        "id": "call-1",
        "inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": [row]}],
    }


def test_hold_mode_end_to_end(model_url: str) -> None:
    unsure, sure = pick_rows()
    demo = Path(MODEL_PATH).parent
    with running_sidecar(
        model_url,
        model={
            "feature_names": FEATURES,
            "class_labels": ["repaid", "default"],
            "artifact": str(demo / "model.onnx"),
            "background": str(demo / "background.parquet"),
        },
        review={"mode": "hold", "confidence_below": 0.6},
        auth={"tokens": TOKENS},
        # Far beyond the test's waits: a held item must not wait for the next poll.
        decisions={"flush_interval_ms": 1000},
    ) as service:
        proxy = httpx.Client(base_url=service.proxy_url, timeout=10)
        control = httpx.Client(base_url=service.control_url, headers=bearer(ALICE), timeout=10)
        path = "/v2/models/credit/infer"

        # A confident call: the model's answer, unchanged, with no review.
        direct = httpx.post(model_url + path, json=infer(sure)).json()
        r = proxy.post(path, json=infer(sure))
        assert r.status_code == 200 and r.json() == direct
        assert "x-review-status" not in r.headers

        tickets = []
        for row in unsure:
            r = proxy.post(path, json=infer(row))
            assert r.status_code == 202, r.text
            assert r.headers["x-review-status"] == "held"
            ticket = r.json()
            assert ticket["status"] == "held" and ticket["reason"] == "low_confidence"
            assert (
                ticket["status_url"]
                == f"{service.control_url}/review/items/{ticket['review_ticket']}"
            )
            tickets.append(ticket)

        def status(ticket: dict[str, Any]) -> httpx.Response:
            return control.get(ticket["status_url"])

        for t in tickets:
            # Sooner than the 1 s poll: holding the answer wakes the background stages.
            wait_until(
                lambda t=t: status(t).status_code == 200,
                timeout_s=0.6,
                what="the held item in the queue before the next poll",
            )
        approve_t, override_t = tickets
        item = status(approve_t).json()
        assert item["mode"] == "held" and item["final"]["state"] == "held"
        assert item["final"]["response"] is None  # the answer stays held until a decision
        assert item["decision"]["confidence"] < 0.6
        top = item["explanation"]["top"]
        assert len(top) >= 3 and all(t["feature"] in FEATURES for t in top)

        base = "/review/items/" + approve_t["review_ticket"]
        assert control.post(base + "/claim").status_code == 200
        r = control.post(base + "/decision", json={"action": "approve", "reason": "checks out"})
        assert r.status_code == 200, r.text
        final = status(approve_t).json()["final"]
        assert final["state"] == "approved" and final["status_code"] == 200
        assert final["response"] == httpx.post(model_url + path, json=infer(unsure[0])).json()

        base = "/review/items/" + override_t["review_ticket"]
        assert control.post(base + "/claim").status_code == 200
        r = control.post(
            base + "/decision",
            json={"action": "override", "outcome": "repaid", "reason": "guarantor on file"},
        )
        assert r.status_code == 200, r.text
        final = status(override_t).json()["final"]
        assert final == {
            "state": "overridden",
            "outcome": "repaid",
            "status_code": None,
            "response": None,
        }

        lookup = control.get(f"/decisions/{override_t['decision_id']}").json()
        assert lookup["review_item"]["status"] == "decided"
        assert lookup["explanation"] is not None

        # The event stream and the audit chain hold every step.
        events_dir = service.settings.sink.directory
        wait_until(
            lambda: sum(e["action"] == "decided" for e in read_events(events_dir)) == 2,
            what="two decided review events",
        )
        steps = [(e["decision_id"], e["action"]) for e in read_events(events_dir)]
        for t in tickets:
            mine = [a for d, a in steps if d == t["review_ticket"]]
            assert mine == ["requested", "claimed", "decided"]
        decided = {e["decision_id"]: e for e in read_events(events_dir) if e["action"] == "decided"}
        assert decided[override_t["review_ticket"]]["outcome"] == "repaid"
        assert decided[approve_t["review_ticket"]]["reviewer"] == "alice"

        auditor = httpx.Client(base_url=service.control_url, headers=bearer(AUDITOR))
        head = auditor.get("/review/audit/head").json()
        assert head["seq"] == 6
        assert auditor.get("/review/audit/verify", params={"head": head["hash"]}).json()["ok"]
        # The same check from the command line, on the live database.
        conn = sqlite3.connect(service.settings.review.db_path)
        try:
            assert audit.verify(conn, head["hash"]).ok
        finally:
            conn.close()
