"""On-demand explanations at the hub: exact TreeSHAP over the bundled demo model, kept in the database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from explainers.errors import ExplainerError
from explainers.explainer import Explainer
from sidecar.config import Settings, load_settings
from sidecar.control.auth import authenticator_from_settings
from sidecar.decisions import Decision, new_call_id
from sidecar.hub import schema
from sidecar.hub.app import create_hub_app
from sidecar.hub.db import async_pool, connect, pool
from sidecar.hub.explain import HubExplainer, load_models
from sidecar.hub.lookup import HubDecisions
from sidecar.hub.review import HubReviewStore
from sidecar.hub.rows import Rows, add
from sidecar.hub.writer import Writer
from sidecar.metrics import Registry
from tests.hub.hubkit import ALICE, TOKENS, as_json, bearer, decision_message
from tests.review.review_helpers import DEMO_ASSETS, FEATURES, make_decision


def _settings(**model: Any) -> Settings:
    entry = {
        "artifact": str(DEMO_ASSETS / "model.onnx"),
        "background": str(DEMO_ASSETS / "background.parquet"),
        "feature_names": FEATURES,
        "version": "1",
        **model,
    }
    return load_settings(
        environ={}, overrides={"auth": {"tokens": TOKENS}, "hub": {"models": {"credit": entry}}}
    )


class Counting:
    """An explainer that counts the explanations it computes."""

    def __init__(self, inner: Explainer) -> None:
        self.inner, self.calls = inner, 0

    def explain(self, rows: Any) -> Any:
        self.calls += 1
        return self.inner.explain(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def explainers() -> Any:
    s = _settings()
    return s, load_models(s.hub.models, s.explainer)


def _client(url: str, settings: Settings, explainers: Any) -> tuple[TestClient, Counting, Any]:
    p = pool(url, 2)
    registry = Registry()
    counting = Counting(explainers["credit"])
    explain_now = HubExplainer(p, settings.hub.models, {"credit": cast(Explainer, counting)})
    app = create_hub_app(
        authenticator=authenticator_from_settings(settings.auth),
        review=settings.review,
        store=HubReviewStore(p, registry=registry),
        decisions=HubDecisions(p),
        lookup_pool=async_pool(url, 2),
        registry=registry,
        ready_checks=[],
        explain_now=explain_now,
    )
    return TestClient(app), counting, p


@pytest.fixture(scope="module")
def two_hubs(hub_database: str, explainers: Any) -> Iterator[list[tuple[TestClient, Counting]]]:
    with connect(hub_database) as conn:
        schema.migrate(conn)
    settings, loaded = explainers
    made = [_client(hub_database, settings, loaded) for _ in range(2)]
    with made[0][0], made[1][0]:  # each app's lifespan opens its lookup pool, on one loop
        yield [(c, n) for c, n, _ in made]
    for _, _, p in made:
        p.close()


def _store(url: str, *ds: Decision) -> None:
    rows = Rows()
    for d in ds:
        add(rows, "decision", decision_message(d))
    with connect(url) as conn:
        Writer(conn).write(rows)


def test_an_unsampled_decision_is_explained_once_for_the_fleet(
    hub_database: str, two_hubs: list[tuple[TestClient, Counting]]
) -> None:
    d = make_decision(new_call_id(), review=None)
    _store(hub_database, d)
    (a, computed_a), (b, computed_b) = two_hubs
    start_a, start_b = computed_a.calls, computed_b.calls
    first = as_json(a.get(f"/decisions/{d.decision_id}", headers=bearer(ALICE)))
    assert first["explanation_source"] == "on_demand"
    explanation = first["explanation"]
    contributions = explanation["contributions"][0]
    assert len(contributions) == len(FEATURES)
    # Exact TreeSHAP is additive: base value plus contributions is the explained margin.
    assert explanation["additivity_error"] < 1e-4
    # The other hub (its own in-memory cache empty) finds it in the database.
    assert computed_a.calls == start_a + 1
    second = as_json(b.get(f"/decisions/{d.decision_id}", headers=bearer(ALICE)))
    assert second["explanation_source"] == "on_demand"
    assert second["explanation"]["contributions"][0] == contributions
    assert (computed_a.calls, computed_b.calls) == (start_a + 1, start_b)


def test_a_decision_of_an_unconfigured_model_or_version_says_why_it_has_no_explanation(
    hub_database: str, two_hubs: list[tuple[TestClient, Counting]]
) -> None:
    other = make_decision(new_call_id(), review=None)
    other.model_name = "fraud"
    old = make_decision(new_call_id(), review=None)
    old.model_version = "0"
    _store(hub_database, other, old)
    a, _ = two_hubs[0]
    for d, why in ((other, "no hub.models entry"), (old, "version 1")):
        body = as_json(a.get(f"/decisions/{d.decision_id}", headers=bearer(ALICE)))
        assert body["explanation"] is None
        assert why in body["explanation_error"]


def test_an_artifact_that_cannot_be_loaded_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    s = _settings(artifact=str(bad))
    with pytest.raises(ExplainerError, match=r"hub\.models\.credit"):
        load_models(s.hub.models, s.explainer)
