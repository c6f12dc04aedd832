from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sidecar.demo.model import load_meta
from sidecar.service import Service
from tests.grpc_model_server import RunningModelServer, grpc_model_server
from tests.servers import running_sidecar

TOKEN = "rita-token-0123456789ab"
AUTH = {"tokens": {TOKEN: {"name": "rita", "role": "reviewer"}}}


def model_section() -> dict[str, Any]:
    """The bundled model's names and labels; no artifact (explanations are not under test)."""
    meta = load_meta()
    return {
        "name": meta.name,
        "version": meta.version,
        "feature_names": list(meta.feature_names),
        "class_labels": list(meta.class_labels),
    }


@contextlib.contextmanager
def grpc_sidecar(upstream: str, **sections: dict[str, Any]) -> Iterator[Service]:
    proxy = {"grpc_listen": "127.0.0.1:0", "grpc_upstream": upstream}
    proxy.update(sections.pop("proxy", {}))
    sections.setdefault("model", model_section())
    sections.setdefault("auth", AUTH)
    # The HTTP upstream is not used here; nothing listens on it.
    with running_sidecar("http://127.0.0.1:9", proxy=proxy, **sections) as svc:
        yield svc


def address(svc: Service) -> str:
    assert svc.grpc is not None
    return f"127.0.0.1:{svc.grpc.port}"


@pytest.fixture(scope="module")
def model_server() -> Iterator[RunningModelServer]:
    with grpc_model_server() as server:
        yield server


@pytest.fixture(scope="module")
def sidecar(model_server: RunningModelServer) -> Iterator[Service]:
    with grpc_sidecar(model_server.url) as svc:
        yield svc


@pytest.fixture
def channel(sidecar: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address(sidecar)) as ch:
        yield ch


@pytest.fixture
def direct(model_server: RunningModelServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(model_server.address) as ch:
        yield ch
