"""The people routes at the hub: reasons, notice, recourse, plot and contests for the fleet.

Decisions of many models meet at the hub, so the people context (labels, the
favourable outcome, the reason catalogue, what may be a reason, what may
change) is built per model in `hub.models`, from the same artifact the hub
already loads for on-demand explanations (`sidecar.hub.explain`), and picked
per decision by its model name (and version, when the entry pins one). Each
model's `reasons` and `recourse` default to the hub file's own `[reasons]`
and `[recourse]` sections; features a group attribute is derived from
(`groups.derive` of the hub file) are never reasons, as on a sidecar.

The routes are the sidecar's own (`sidecar.people.router`), over the hub's
database: same answers, same roles and object-level checks. Corrected values
of a contest are scored through the model's `proxy_url` (a sidecar's data
plane), or recorded without a re-score where none is configured.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from explainers.explainer import Explainer
from sidecar.config import ConfigError, Settings
from sidecar.control.auth import Authenticator
from sidecar.control.lookup import Explanations
from sidecar.metrics import Registry
from sidecar.people.context import Keys, PeopleContext, Unanswerable, context_of
from sidecar.people.reasons import reasons_or_none
from sidecar.people.router import create_people_router
from sidecar.review.model import ReviewStore


class HubPeople:
    """Each configured model's people context, and the router that serves them."""

    def __init__(self, settings: Settings, explainers: dict[str, Explainer]) -> None:
        """Check every model's people settings against its artifact; ConfigError names the key."""
        self._settings = settings
        derived = {rule.feature for rule in settings.groups.derive.values()}
        self._contexts: dict[str, PeopleContext] = {}
        for name, m in settings.hub.models.items():
            key = f"hub.models.{name}"
            explainer = explainers.get(name)
            names = list(m.feature_names) or (list(explainer.feature_names) if explainer else [])
            try:
                self._contexts[name] = context_of(
                    feature_names=names,
                    class_labels=list(m.class_labels),
                    favourable_label=m.favourable_label,
                    # Only derivations from this model's own features concern it.
                    derived={f for f in derived if f in names},
                    reasons=m.reasons or settings.reasons,
                    recourse=m.recourse or settings.recourse,
                    explainer=explainer,
                    keys=Keys(
                        reasons=f"{key}.reasons" if m.reasons is not None else "reasons",
                        recourse=f"{key}.recourse" if m.recourse is not None else "recourse",
                        artifact=f"{key}.artifact",
                        favourable=f"{key}.favourable_label",
                    ),
                )
            except ConfigError as exc:
                if key in str(exc):
                    raise
                # The hub file's own section, found wrong for this model: say which.
                raise ConfigError(f"{exc} (applied to {key})") from None

    def context(self, decision: dict[str, Any]) -> PeopleContext:
        """The context of the decision's model; 409 naming the key where none is configured."""
        model = str(decision.get("model_name") or "")
        m = self._settings.hub.models.get(model)
        if m is None:
            raise Unanswerable(
                409, f"no hub.models entry for model {model!r}: the hub cannot give its reasons"
            )
        version = decision.get("model_version")
        if m.version is not None and m.version != version:
            raise Unanswerable(
                409, f"hub.models.{model} is version {m.version}, the decision's is {version}"
            )
        return self._contexts[model]

    def proxy_url(self, decision: dict[str, Any]) -> str | None:
        m = self._settings.hub.models.get(str(decision.get("model_name") or ""))
        return None if m is None else m.proxy_url

    def reasons_of(
        self, decision: dict[str, Any], explanation: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The reasons for the lookup (None where none can be given, as on a sidecar)."""
        try:
            ctx = self.context(decision)
        except Unanswerable:
            return None
        return reasons_or_none(ctx, decision, explanation)

    def router(
        self,
        *,
        authenticator: Authenticator,
        explanations: Explanations,
        store: ReviewStore,
        registry: Registry,
    ) -> APIRouter:
        return create_people_router(
            settings=self._settings,
            context=self.context,
            authenticator=authenticator,
            explanations=explanations,
            store=store,
            registry=registry,
            proxy_url=self.proxy_url,
        )
