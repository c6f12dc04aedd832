"""The report: one period's figures as the machine-readable contract (README, "Monitor").

`build` takes a (merged) state and returns the JSON-ready dict that the
Markdown and HTML forms, the dashboard and `--gate` all read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config.sections import MonitorSettings
from sidecar.monitor import alerts as alert_rules
from sidecar.monitor.drift import Reference, drift_figures, importance
from sidecar.monitor.figures import METHODS, Options, scope_figures
from sidecar.monitor.state import ALL, State
from sidecar.sinks.events import rfc3339

REPORT_VERSION = 1
PSI_METHODS = {
    "popmon": "sum (p - q) ln(p / q) over bins, shares plus 1e-5 (popmon's convention)",
    "evidently": (
        "sum (p - q) ln(p / q) over the bins either side uses, an empty bin's share 1e-4"
        " or the smallest share / 10^6 when that is at most 1e-4 (Evidently's convention)"
    ),
}


@dataclass
class ModelInfo:
    class_labels: list[str]
    favourable_label: str | None
    artifact: Path | None = None


def artifact_sha256(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _top_k(settings: MonitorSettings) -> int:
    ks = [r.k for r in settings.alerts if r.metric == "top_features"]
    return ks[0] if ks else 3


def build(
    state: State,
    settings: MonitorSettings,
    model: ModelInfo,
    reference: Reference | None,
    *,
    waiting_outcome_ids: list[str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    opts = Options(settings.min_group_size, settings.confidence, tuple(state.feature_names))
    k = _top_k(settings)
    starts = sorted(state.windows)
    first = state.windows[starts[0]] if starts else None
    names = state.feature_names
    if settings.drift_against == "first_window" and first is not None:
        ref_hist = first.hist if state.edges else None
        ref_score: list[int] | None = first.score_hist
        ref_imp: dict[str, float] | None = importance(first, names, ALL)
        against = "first_window"
    else:
        ref_hist = reference.hist if reference is not None else None
        ref_score = reference.score_hist if reference is not None else None
        ref_imp = reference.importance if reference is not None else None
        # Without a reference report, prediction and attribution drift use the first window.
        if ref_score is None and first is not None:
            ref_score = first.score_hist
        if not ref_imp and first is not None:
            ref_imp = importance(first, names, ALL)
        against = "reference"

    def scope(window: Any) -> dict[str, Any]:
        figs = scope_figures(window.groups, opts)
        figs["drift"] = drift_figures(
            window,
            feature_names=names,
            ref_hist=ref_hist,
            ref_score=ref_score,
            ref_importance=ref_imp,
            current_importance=importance(window, names, ALL),
            k=k,
            psi_convention=settings.psi_convention,
        )
        return figs

    windows = []
    raised: list[dict[str, Any]] = []
    w_s = settings.window_s
    for start in starts:
        label = {"start": rfc3339(start), "end": rfc3339(start + w_s)}
        figs = scope(state.windows[start])
        windows.append({**label, **figs})
        raised += alert_rules.evaluate(figs, label, list(settings.alerts))
    total = state.cumulative()
    cumulative = scope(total)
    period_alerts = alert_rules.evaluate(cumulative, "cumulative", list(settings.alerts))
    raised += period_alerts
    failed = sorted({a["rule"] for a in period_alerts if a["gate"]})

    versions = sorted(state.models.items(), key=lambda mv: -mv[1])
    name, _, version = versions[0][0].partition("@") if versions else ("", "", "")
    t = state.traffic
    return {
        "report_version": REPORT_VERSION,
        "generated_at": rfc3339(now),
        "model": {
            "name": name or None,
            "version": version or None,
            "versions": dict(versions),
            "artifact": str(model.artifact) if model.artifact else None,
            "artifact_sha256": artifact_sha256(model.artifact),
            "class_labels": model.class_labels,
            "favourable_label": model.favourable_label,
            "decision_rules": dict(state.decision_rules),
        },
        "period": {
            "start": rfc3339(state.first_time) if state.first_time is not None else None,
            "end": rfc3339(state.last_time) if state.last_time is not None else None,
            "window": settings.window,
            "windows": len(starts),
        },
        "traffic": {
            **t,
            "waiting": dict(state.pending),
            "waiting_outcome_ids": waiting_outcome_ids or [],
            "gaps": {
                "records": t["gap_records"],
                "decisions_missing": t["gap_decisions"],
                "by_reason": dict(state.gap_reasons),
            },
            # Share of the decisions made that the stream holds (gap records name the rest).
            "coverage": (
                t["decisions"] / (t["decisions"] + t["gap_decisions"])
                if t["decisions"] + t["gap_decisions"]
                else None
            ),
        },
        "method": {
            "confidence": settings.confidence,
            "min_group_size": settings.min_group_size,
            "intervals": METHODS,
            "positive_class": "the favourable label",
            "psi": PSI_METHODS[settings.psi_convention],
            "ks": "largest gap between cumulative bin shares",
            "drift_against": against,
            "drift_reference": reference.source if reference is not None else None,
        },
        "cumulative": cumulative,
        "windows": windows,
        "alerts": raised,
        "gate": {"passed": not failed, "failed_rules": failed},
        # This period as a reference for a later one (`monitor.reference`).
        "reference": {
            "feature_names": names,
            "edges": state.edges,
            "hist": total.hist if state.edges else None,
            "score_hist": total.score_hist,
            "importance": importance(total, names, ALL) or None,
        },
    }
