"""Helpers for the hub's tests: events as sidecars make them, a producer, a hub in-process or as a process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from sidecar.decisions import Decision
from sidecar.sinks import events
from tests.kafka_broker import free_port
from tests.servers import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {
    "alice-token-0123456789": {"name": "alice", "role": "reviewer"},
    "bob-token-0123456789ab": {"name": "bob", "role": "reviewer"},
    "audrey-token-0123456789": {"name": "audrey", "role": "auditor"},
}
ALICE, BOB, AUDITOR = TOKENS


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call_id_at(at: float) -> str:
    """A UUIDv7 call id minted at `at`, as a sidecar would have minted it then."""
    return f"{(int(at * 1000) << 80) | (random.getrandbits(80) & _RANDOM) | _VERSION_VARIANT:032x}"


_RANDOM = ((1 << 80) - 1) & ~((0xF << 76) | (0b11 << 62))
_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)


def decision(
    *,
    call_id: str | None = None,
    row: int = 0,
    request_id: str | None = None,
    model: str = "credit",
    groups: dict[str, str] | None = None,
    at: float | None = None,
    review: str | None = None,
) -> Decision:
    when = time.time() if at is None else at
    return Decision(
        call_id=call_id or call_id_at(when),
        request_id=request_id,
        row=row,
        time=when,
        protocol="v2",
        model_name=model,
        model_version="1",
        features=[1.0, 2.0],
        feature_names=["a", "b"],
        prediction="repaid",
        probabilities=[0.45, 0.55],
        confidence=0.55,
        upstream_status=200,
        upstream_latency_ms=1.5,
        group_attributes=dict(groups or {}),
        review=review,
        review_reason="low_confidence" if review else None,
    )


def decision_message(d: Decision) -> bytes:
    return events.dumps(events.decision_event(d))


def explanation_message(d: Decision) -> bytes:
    body = {
        "model_version": "1",
        "explainer": "treeshap",
        "explainer_version": "1",
        "output_space": "margin",
        "feature_names": ["a", "b"],
        "base_values": [0.1],
        "contributions": [[0.2, -0.1]],
        "additivity_error": 0.0,
        "cache_hit": False,
        "background_hash": None,
        "top": [],
        "margin": 0.2,
        "fidelity": "match",
        "fidelity_detail": None,
    }
    return events.dumps(events.explanation_event(d, body))


def request_message(d: Decision) -> bytes:
    return events.dumps(
        events.review_event(
            decision_id=d.decision_id,
            action="requested",
            reason="low_confidence",
            reviewer=None,
            outcome=None,
            previous_audit_hash=None,
            time=d.time,
        )
    )


def produce(bootstrap: str, messages: Iterable[tuple[str, str, bytes]]) -> int:
    """Send (topic, key, value) messages and wait for every acknowledgement."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    try:
        for topic, key, value in messages:
            producer.send(topic, key=key.encode(), value=value)
            n += 1
        producer.flush(60)
    finally:
        producer.close(10)
    return n


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
    assert row is not None
    return int(row[0])


def hub_env(
    url: str, bootstrap: str, topics: dict[str, str], port: int, group: str
) -> dict[str, str]:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(
        PYTHONPATH=str(ROOT),
        SIDECAR_HUB__DATABASE_URL=url,
        SIDECAR_HUB__PORT=str(port),
        SIDECAR_HUB__GROUP_ID=group,
        SIDECAR_HUB__POLL_TIMEOUT_MS="50",
        SIDECAR_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        SIDECAR_AUTH__TOKENS=json.dumps(TOKENS),
        **{f"SIDECAR_KAFKA__{k.upper()}": v for k, v in topics.items() if k != "topic_gaps"},
    )
    return env


@contextmanager
def hub_process(
    url: str, bootstrap: str, topics: dict[str, str], group: str | None = None, **extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`sidecar hub` as a process of its own (so it can be SIGKILLed); yields (process, base URL)."""
    import httpx

    port = free_port()
    env = hub_env(url, bootstrap, topics, port, group or f"g{uuid.uuid4().hex[:8]}")
    env.update(extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "--log-level", "warning", "hub"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"hub exited with {proc.returncode}: {err[-2000:]}")
        try:
            return httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout_s=60, what="the hub to be ready", interval_s=0.1)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def kinds(topics: dict[str, str]) -> dict[str, str]:
    return {
        "decision": topics["topic_decisions"],
        "explanation": topics["topic_explanations"],
        "review": topics["topic_reviews"],
    }


def as_json(resp: Any) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()
