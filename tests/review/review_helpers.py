"""Shared helpers for the review tests (imported by name: `conftest` is ambiguous across dirs): a real store, a real file sink, a real control plane.

The control plane runs in real uvicorn on 127.0.0.1 (port 0) in a thread, and
explanations come from real TreeSHAP over the bundled demo model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from explainers.explainer import build_explainer
from sidecar.config import Settings, load_settings
from sidecar.control.app import create_control_app
from sidecar.control.auth import authenticator_from_settings
from sidecar.control.store import DecisionStore
from sidecar.decisions import Decision
from sidecar.metrics import Registry
from sidecar.review.api import create_review_router
from sidecar.review.store import SqliteReviewStore
from sidecar.sinks.files import FileSink
from tests.servers import jsonl_events

DEMO_ASSETS = Path(__file__).resolve().parents[2] / "sidecar" / "demo" / "assets"
DEMO_META = json.loads((DEMO_ASSETS / "model.json").read_text())
FEATURES = DEMO_META["feature_names"]
TOPICS = {
    "decision": "sidecar.decisions",
    "explanation": "sidecar.explanations",
    "review": "sidecar.reviews",
}

TOKENS = {
    "alice-token-0123456789": {"name": "alice", "role": "reviewer"},
    "bob-token-0123456789ab": {"name": "bob", "role": "reviewer"},
    "audrey-token-0123456789": {"name": "audrey", "role": "auditor"},
    "adam-token-0123456789ab": {"name": "adam", "role": "admin"},
}
ALICE, BOB, AUDITOR, ADMIN = TOKENS


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ROW = [34.0, 52_000.0, 0.41, 60.0, 2.0, 15_000.0, 3.0, 0.72, 5.0, 3.0]


def make_decision(
    request_id: str,
    row: int = 0,
    *,
    confidence: float = 0.55,
    features: list[Any] | None = None,
    groups: dict[str, str] | None = None,
    review: str | None = "queued",
    reason: str | None = "low_confidence",
) -> Decision:
    p = confidence
    return Decision(
        call_id=request_id,
        row=row,
        time=time.time(),
        protocol="v2",
        model_name="credit",
        model_version="1",
        features=list(ROW if features is None else features),
        feature_names=list(FEATURES),
        prediction="default",
        probabilities=[1 - p, p],
        confidence=p,
        upstream_status=200,
        upstream_latency_ms=3.2,
        group_attributes={"gender": "F", "age_band": "18-24"} if groups is None else groups,
        review=review,
        review_reason=reason,
    )


class DemoExplainer:
    """The real explainer (exact TreeSHAP) over the bundled demo model, counting its calls."""

    def __init__(self) -> None:
        self.explainer = build_explainer(
            DEMO_ASSETS / "model.onnx",
            model_version="1",
            background_path=DEMO_ASSETS / "background.parquet",
            feature_names=list(FEATURES),
        )
        self.calls = 0

    def __call__(self, decision: Decision) -> dict[str, Any]:
        self.calls += 1
        return self.explainer.explain_one(decision.features).to_dict()


@pytest.fixture(scope="session")
def demo_explainer() -> DemoExplainer:
    return DemoExplainer()


def read_events(directory: Path, kind: str = "review") -> list[dict[str, Any]]:
    return jsonl_events(directory / TOPICS[kind])


@dataclass
class ReviewEnv:
    settings: Settings
    registry: Registry
    sink: FileSink
    events_dir: Path
    store: SqliteReviewStore
    decisions: DecisionStore
    db_path: Path

    def events(self, kind: str = "review") -> list[dict[str, Any]]:
        return read_events(self.events_dir, kind)


def build_env(
    tmp_path: Path, review: dict[str, Any] | None = None, clock: Callable[[], float] = time.time
) -> ReviewEnv:
    settings = load_settings(
        environ={},
        overrides={
            "review": {"db_path": str(tmp_path / "review.db"), **(review or {})},
            "auth": {"tokens": TOKENS},
        },
    )
    registry = Registry()
    events_dir = tmp_path / "events"
    sink = FileSink(
        events_dir, TOPICS, registry, rotate_bytes=1 << 20, rotate_interval_s=3600, keep_files=10
    )
    sink.start()
    store = SqliteReviewStore(
        settings.review.db_path,
        sink=sink,
        registry=registry,
        lease_seconds=settings.review.lease_seconds,
        clock=clock,
    )
    decisions = DecisionStore(1000, registry)
    return ReviewEnv(
        settings, registry, sink, events_dir, store, decisions, settings.review.db_path
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ReviewEnv]:
    e = build_env(tmp_path)
    yield e
    e.store.close()
    e.sink.close()


def control_app(
    env: ReviewEnv, explain_now: Callable[[Decision], dict[str, Any]] | None
) -> FastAPI:
    router = create_review_router(
        settings=env.settings.review,
        authenticator=authenticator_from_settings(env.settings.auth),
        store=env.store,
        registry=env.registry,
        decisions=env.decisions,
        explain_now=explain_now,
    )
    return create_control_app(registry=env.registry, ready_checks=[], routers=[router])


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=bearer(token) if token else {}, timeout=10.0)


def serve(app: FastAPI) -> Served:
    """Run the app in real uvicorn on a free loopback port; return once /healthz answers."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="review-control-plane", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("control plane did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    while httpx.get(url + "/healthz").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("control plane not healthy")
    return Served(url, server, thread)


@pytest.fixture
def served(env: ReviewEnv, demo_explainer: DemoExplainer) -> Iterator[Served]:
    s = serve(control_app(env, demo_explainer))
    yield s
    s.server.should_exit = True
    s.thread.join(10)
