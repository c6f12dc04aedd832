"""Alert rules over a scope's figures, and the `sidecar.alerts` event body.

A rule names one figure, a threshold (above or below) and whether the point
value or its whole confidence interval must pass it. Disparity rules are
applied to each group's disparity against the best-placed group (figures.py),
so an alert names the group that is behind and the group it is compared with,
not every group of the attribute.
"""

from __future__ import annotations

from typing import Any

from sidecar.config.sections import MonitorSettings
from sidecar.monitor.figures import DISPARITIES, RATES
from sidecar.sinks.events import SCHEMA_VERSION, event_id, rfc3339

Rule = MonitorSettings.Rule


def _fires(value: float | None, interval: list[float] | None, rule: Rule) -> bool:
    if rule.use == "interval":
        if interval is None:
            return False
        if rule.above is not None:
            return interval[0] > rule.above
        return rule.below is not None and interval[1] < rule.below
    if value is None:
        return False
    if rule.above is not None:
        return value > rule.above
    return rule.below is not None and value < rule.below


def _threshold(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"use": rule.use}
    if rule.above is not None:
        out["above"] = rule.above
    if rule.below is not None:
        out["below"] = rule.below
    if rule.metric == "top_features":
        out["k"] = rule.k
    return out


def evaluate(
    scope: dict[str, Any], window: dict[str, Any] | str, rules: list[Rule]
) -> list[dict[str, Any]]:
    """The alerts the rules raise on one scope (a window's figures, or the period's)."""
    out: list[dict[str, Any]] = []

    def alert(rule: Rule, **kw: Any) -> None:
        out.append(
            {
                "rule": rule.name,
                "metric": rule.metric,
                "window": window,
                "threshold": _threshold(rule),
                "gate": rule.gate,
                **kw,
            }
        )

    for rule in rules:
        m = rule.metric
        if m in RATES:
            for attr, a in scope["attributes"].items():
                for g, fig in a["groups"].items():
                    f = fig[m]
                    if f["status"] == "ok" and _fires(f["value"], f["interval"], rule):
                        alert(
                            rule,
                            attribute=attr,
                            groups=[g],
                            value=f["value"],
                            interval=f["interval"],
                            evidence={"numerator": f["numerator"], "denominator": f["denominator"]},
                        )
        elif m in DISPARITIES:
            for attr, a in scope["attributes"].items():
                for per in a["disparities"]["by_group"].values():
                    d = per.get(m)
                    if d is not None and _fires(d["value"], d["interval"], rule):
                        alert(
                            rule,
                            attribute=attr,
                            groups=d["groups"],
                            value=d["value"],
                            interval=d["interval"],
                            evidence={
                                "compared": d["metric"],
                                "method": d["method"],
                                "rates": {
                                    h: {
                                        k: a["groups"][h][d["metric"]][k]
                                        for k in ("value", "numerator", "denominator")
                                    }
                                    for h in d["groups"]
                                },
                            },
                        )
        elif m in ("psi", "ks"):
            drift = scope.get("drift") or {}
            items = list((drift.get("features") or {}).items())
            if drift.get("prediction"):
                items.append(("(score)", drift["prediction"]))
            for feature, f in items:
                if _fires(f[m], None, rule):
                    alert(
                        rule,
                        attribute=None,
                        groups=[],
                        feature=feature,
                        value=f[m],
                        interval=None,
                        evidence={k: v for k, v in f.items() if k != m},
                    )
        elif m == "top_features":
            att = (scope.get("drift") or {}).get("attribution")
            if att and att["k"] == rule.k and att["changed"]:
                alert(
                    rule,
                    attribute=None,
                    groups=[],
                    value=None,
                    interval=None,
                    evidence={k: att[k] for k in ("reference_top", "top", "entered", "left")},
                )
    return out


def alert_event(
    alert: dict[str, Any], model: dict[str, Any], now: float | None = None
) -> dict[str, Any]:
    """The `sidecar.alerts` body; its id is the same however often the same firing is seen."""
    window = alert["window"]
    start = window["start"] if isinstance(window, dict) else window
    eid = event_id(
        "alert",
        alert["rule"],
        model.get("name"),
        model.get("version"),
        start,
        alert.get("attribute"),
        "|".join(alert.get("groups") or []),
        alert.get("feature"),
    )
    return {
        "event_type": "alert",
        "schema_version": SCHEMA_VERSION,
        "event_id": eid,
        "time": rfc3339(now),
        "model": {"name": model.get("name"), "version": model.get("version")},
        **alert,
    }
