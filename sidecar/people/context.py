"""What reasons and recourse need, built once at start from the settings and the explainer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from explainers.ensemble import TreeEnsemble
from explainers.errors import InputError
from explainers.explainer import Explainer
from explainers.recourse import Actionable, Favourable
from explainers.reference import Reference
from sidecar.config import ConfigError, ReasonSettings, RecourseSettings, Settings
from sidecar.people.catalogue import Catalogue, load_catalogue
from sidecar.pipeline.explain import feature_floats

RUNTIMES = {
    "onnx": "onnxruntime",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "sklearn": "scikit-learn",
}


class Unanswerable(Exception):
    """A question about a decision that cannot be answered; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Keys:
    """Where a context's settings are, for the messages that name them."""

    reasons: str = "reasons"
    recourse: str = "recourse"
    artifact: str = "model.artifact"
    favourable: str = "model.favourable_label"


# What the people routes need per decision: the sidecar's one context, or the hub's per model.
ContextFor = Callable[[dict[str, Any]], "PeopleContext"]


@dataclass(frozen=True)
class PeopleContext:
    """The model's favourable outcome, what may be a reason, what may change, and the words."""

    feature_names: list[str]
    class_labels: list[str]
    favourable_label: str | None
    excluded: frozenset[str]
    count: int
    catalogue: Catalogue
    actionable: list[Actionable]
    max_options: int
    max_pair_candidates: int
    ensemble: TreeEnsemble | None
    reference: Reference | None
    runtime: str | None
    # The key that sets favourable_label, named when it is missing.
    favourable_key: str = "model.favourable_label"

    def favourable(self, n_outputs: int) -> Favourable:
        if self.favourable_label is None:
            raise Unanswerable(
                409, f"{self.favourable_key} is not configured: no outcome is favourable"
            )
        try:
            return Favourable.of(n_outputs, self.class_labels, self.favourable_label)
        except ValueError as exc:
            raise Unanswerable(409, str(exc)) from None

    def outcome(self, decision: dict[str, Any]) -> str:
        """The decision's class label (the model server's answer)."""
        pred = decision.get("prediction")
        if isinstance(pred, str) and pred in self.class_labels:
            return pred
        if (
            isinstance(pred, int)
            and not isinstance(pred, bool)
            and 0 <= pred < len(self.class_labels)
        ):
            return self.class_labels[pred]
        raise Unanswerable(
            409, f"the decision's prediction {pred!r} is not one of model.class_labels"
        )

    def is_favourable(self, decision: dict[str, Any]) -> bool:
        if self.favourable_label is None:
            self.favourable(1)  # raises, naming the key
        return self.outcome(decision) == self.favourable_label

    def row(self, decision: dict[str, Any]) -> list[float]:
        feats = decision.get("features")
        if not feats or len(feats) != len(self.feature_names):
            raise Unanswerable(409, "the decision has no recorded features of the model's width")
        try:
            return feature_floats(feats)
        except InputError as exc:
            raise Unanswerable(409, str(exc)) from None


def shown(value: float, ens: TreeEnsemble | None) -> float | None:
    """A value as the person should read it: the shortest decimal of the model's input type
    (0.54, not 0.5400000214576721), None for missing."""
    if math.isnan(value):
        return None
    if ens is not None and ens.input_dtype == np.float32:
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    return float(value)


def build_context(settings: Settings, explainer: Explainer | None) -> PeopleContext:
    """Check the `[reasons]` and `[recourse]` keys against the model; ConfigError names the key."""
    m = settings.model
    return context_of(
        feature_names=list(m.feature_names),
        class_labels=list(m.class_labels),
        favourable_label=m.favourable_label,
        derived={rule.feature for rule in settings.groups.derive.values()},
        reasons=settings.reasons,
        recourse=settings.recourse,
        explainer=explainer,
    )


def context_of(
    *,
    feature_names: list[str],
    class_labels: list[str],
    favourable_label: str | None,
    derived: set[str],
    reasons: ReasonSettings,
    recourse: RecourseSettings,
    explainer: Explainer | None,
    keys: Keys | None = None,
) -> PeopleContext:
    """One model's context from its sections; ConfigError names the key as `keys` spell it
    (the sidecar's own sections by default; the hub names each model's)."""
    k = keys or Keys()
    names = feature_names or (list(explainer.feature_names) if explainer else [])
    for name in reasons.exclude:
        if names and name not in names:
            raise ConfigError(f"config key '{k.reasons}.exclude': {name!r} is not a feature")
    excluded = frozenset(reasons.exclude) | derived
    catalogue = load_catalogue(reasons.catalogue, names, f"{k.reasons}.catalogue")
    actionable: list[Actionable] = []
    for name, a in recourse.features.items():
        key = f"{k.recourse}.features.{name}"
        if name not in names:
            raise ConfigError(f"config key '{key}': {name!r} is not a feature of the model")
        if name in derived:
            raise ConfigError(f"config key '{key}': a group attribute is derived from {name!r}")
        if name in reasons.exclude:
            raise ConfigError(f"config key '{key}': {name!r} is in {k.reasons}.exclude")
        actionable.append(
            Actionable(
                feature=names.index(name),
                allowed=a.direction,
                low=-math.inf if a.min is None else a.min,
                high=math.inf if a.max is None else a.max,
                step=a.step,
            )
        )
    if actionable and explainer is None:
        raise ConfigError(f"config key '{k.recourse}.features': recourse needs {k.artifact}")
    return PeopleContext(
        feature_names=names,
        class_labels=class_labels,
        favourable_label=favourable_label,
        excluded=excluded,
        count=reasons.count,
        catalogue=catalogue,
        actionable=actionable,
        max_options=recourse.max_options,
        max_pair_candidates=recourse.max_pair_candidates,
        ensemble=explainer.ensemble if explainer is not None else None,
        reference=explainer.reference if explainer is not None else None,
        runtime=RUNTIMES.get(explainer.format) if explainer is not None else None,
        favourable_key=k.favourable,
    )
