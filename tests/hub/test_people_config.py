"""Bad people settings for a hub model stop the hub's start, naming the key (no database needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from explainers.explainer import Explainer
from sidecar.config import ConfigError, load_settings
from sidecar.config.sections import ExplainerSettings
from sidecar.demo.model import model_settings, people_settings
from sidecar.hub.explain import load_models
from sidecar.hub.people import HubPeople
from sidecar.people.context import Unanswerable

M = model_settings()


def _model(**extra: Any) -> dict[str, Any]:
    base = {k: M[k] for k in ("artifact", "background", "feature_names", "class_labels")}
    return {**base, "favourable_label": M["favourable_label"], **extra}


@pytest.fixture(scope="module")
def explainers() -> dict[str, Explainer]:
    settings = load_settings(environ={}, overrides={"hub": {"models": {"credit": _model()}}})
    return load_models(settings.hub.models, ExplainerSettings())


def _people(explainers: dict[str, Explainer], **sections: Any) -> HubPeople:
    return HubPeople(load_settings(environ={}, overrides=sections), explainers)


def test_each_models_reasons_and_recourse_are_checked_naming_its_key(
    explainers: dict[str, Explainer], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"hub\.models\.credit\.recourse\.features\.salary"):
        _people(
            explainers,
            hub={
                "models": {"credit": _model(recourse={"features": {"salary": {"direction": "up"}}})}
            },
        )
    with pytest.raises(ConfigError, match=r"hub\.models\.credit\.reasons\.exclude"):
        _people(explainers, hub={"models": {"credit": _model(reasons={"exclude": ["postcode"]})}})
    bad = tmp_path / "reasons.toml"
    bad.write_text('language = "en"\n[features.salary]\nup = "x"\n')
    with pytest.raises(ConfigError, match=r"hub\.models\.credit\.reasons\.catalogue.*salary"):
        _people(explainers, hub={"models": {"credit": _model(reasons={"catalogue": str(bad)})}})
    # The hub file's own [recourse] applies to every model that has none of its own: a
    # feature a group attribute is derived from (the hub file's [groups]) is refused.
    with pytest.raises(
        ConfigError, match=r"'recourse\.features\.age'.*derived.*applied to hub\.models\.credit"
    ):
        _people(
            explainers,
            recourse={"features": {"age": {"direction": "down"}}},
            groups={"derive": {"age_band": {"feature": "age", "bins": [18, 30]}}},
            hub={"models": {"credit": _model()}},
        )
    # Recourse needs the model's artifact loaded (an entry the hub could not explain with).
    with pytest.raises(ConfigError, match=r"hub\.models\.credit\.artifact"):
        _people({}, **people_settings(), hub={"models": {"credit": _model()}})


def test_labels_proxy_and_hub_url_are_checked_by_the_settings() -> None:
    with pytest.raises(ConfigError, match=r"hub\.models\.credit"):
        load_settings(
            environ={}, overrides={"hub": {"models": {"credit": _model(favourable_label="ok")}}}
        )
    with pytest.raises(ConfigError, match=r"hub\.models\.credit\.proxy_url"):
        load_settings(
            environ={},
            overrides={"hub": {"models": {"credit": _model(proxy_url="https://side:8080")}}},
        )
    with pytest.raises(ConfigError, match=r"review\.hub_url"):
        load_settings(environ={}, overrides={"review": {"hub_url": "hub.example.test"}})


def test_a_decision_of_a_model_or_version_not_configured_is_answered_409(
    explainers: dict[str, Explainer],
) -> None:
    people = _people(
        explainers, **people_settings(), hub={"models": {"credit": _model(version="7")}}
    )
    ctx = people.context({"model_name": "credit", "model_version": "7"})
    assert ctx.favourable_label == M["favourable_label"]
    with pytest.raises(Unanswerable, match=r"no hub\.models entry for model 'fraud'"):
        people.context({"model_name": "fraud", "model_version": "7"})
    with pytest.raises(Unanswerable, match=r"hub\.models\.credit is version 7"):
        people.context({"model_name": "credit", "model_version": "6"})
    assert people.reasons_of({"model_name": "fraud"}, None) is None
    assert people.proxy_url({"model_name": "credit"}) is None
