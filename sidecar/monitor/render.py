"""The report as Markdown and as a self-contained HTML page (the living model card)."""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Any

from sidecar.monitor import charts


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _rate(f: dict[str, Any]) -> str:
    if f["status"] != "ok":
        return str(f["status"])
    lo, hi = f["interval"]
    return f"{f['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _disp(d: dict[str, Any]) -> str:
    if d.get("value") is None:
        return str(d.get("status", "-"))
    ci = d.get("interval")
    text = f"{d['value']:.3f}"
    if ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{text} ({' vs '.join(d['groups'])})"


GROUP_COLUMNS = (
    ("count", "decisions"),
    ("selection_rate", "selection rate"),
    ("true_positive_rate", "TPR"),
    ("false_positive_rate", "FPR"),
    ("accuracy", "accuracy"),
    ("precision", "precision"),
    ("review_rate", "to review"),
    ("override_rate", "overridden"),
    ("mean_time_to_decision_s", "review time (s)"),
)


def _cell(fig: dict[str, Any], key: str) -> str:
    v = fig[key]
    return _rate(v) if isinstance(v, dict) else _fmt(v)


def _tables(rep: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the report, shared by both forms."""
    out = []
    m, p, t = rep["model"], rep["period"], rep["traffic"]
    out.append(
        (
            "Model",
            ["model", "version", "artifact", "favourable label", "period", "decisions", "coverage"],
            [
                [
                    _fmt(m["name"]),
                    _fmt(m["version"]),
                    _fmt(m["artifact_sha256"]),
                    _fmt(m["favourable_label"]),
                    f"{_fmt(p['start'])} - {_fmt(p['end'])}",
                    str(t["decisions"]),
                    _fmt(t["coverage"]),
                ]
            ],
        )
    )
    cum = rep["cumulative"]
    for attr, a in cum["attributes"].items():
        rows = [[g] + [_cell(f, k) for k, _ in GROUP_COLUMNS] for g, f in a["groups"].items()]
        out.append((f"Groups by {attr}", ["group"] + [h for _, h in GROUP_COLUMNS], rows))
        d = a["disparities"]
        out.append(
            (
                f"Disparities by {attr}",
                ["metric", "value [interval] (groups)"],
                [[k, _disp(d[k])] for k in d if k != "by_group"],
            )
        )
    drift = cum["drift"]
    if drift["features"]:
        out.append(
            (
                "Drift (whole period against the reference)",
                ["feature", "PSI", "KS", "values", "missing"],
                [
                    [f, _fmt(v["psi"], 4), _fmt(v["ks"], 4), str(v["count"]), str(v["missing"])]
                    for f, v in drift["features"].items()
                ],
            )
        )
    imp = (cum["overall"] or {}).get("mean_abs_shap") or {}
    if imp:
        columns = [
            (f"{attr}={g}", fig["mean_abs_shap"])
            for attr, a in cum["attributes"].items()
            if "&" not in attr
            for g, fig in a["groups"].items()
        ]
        out.append(
            (
                "Feature importance (mean |SHAP|), overall and per group",
                ["feature", "overall"] + [name for name, _ in columns],
                [
                    [f, _fmt(v, 4)] + [_fmt(col.get(f), 4) for _, col in columns]
                    for f, v in sorted(imp.items(), key=lambda fv: -fv[1])
                ],
            )
        )
    out.append(
        (
            "Alerts",
            ["rule", "window", "attribute", "groups / feature", "value", "interval"],
            [
                [
                    a["rule"],
                    a["window"] if isinstance(a["window"], str) else a["window"]["start"],
                    _fmt(a.get("attribute")),
                    ", ".join(a["groups"]) or _fmt(a.get("feature")),
                    _fmt(a["value"]),
                    f"[{a['interval'][0]:.3f}, {a['interval'][1]:.3f}]" if a["interval"] else "-",
                ]
                for a in rep["alerts"]
            ],
        )
    )
    return out


def markdown(rep: dict[str, Any]) -> str:
    m = rep["model"]
    lines = [f"# Model card: {m['name']} {m['version']}", ""]
    gate = rep["gate"]
    lines.append(
        "Gate: **passed**"
        if gate["passed"]
        else f"Gate: **failed** ({', '.join(gate['failed_rules'])})"
    )
    for title, header, rows in _tables(rep):
        lines += [
            "",
            f"## {title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines.append("")
    return "\n".join(lines)


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}"
    "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ddd;padding:4px 8px;font-size:13px}"
    "th{background:#f3f3f3}.charts{display:flex;flex-wrap:wrap;gap:16px}.charts figure{margin:0}"
    "figcaption{font-size:13px;color:#555}.fail{color:#b00}.pass{color:#070}"
)


# The page's one stylesheet is inline; a Content-Security-Policy admits it by its hash.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()


def chart_blocks(rep: dict[str, Any]) -> list[tuple[str, str]]:
    """(caption, svg) for every chart of the report."""
    out = []
    cum = rep["cumulative"]
    for attr, a in cum["attributes"].items():
        out.append(
            (
                f"Selection rate by {attr}, per window (band: {rep['method']['confidence']:.0%} interval)",
                charts.rate_over_time(rep["windows"], attr, "selection_rate"),
            )
        )
        per = a["disparities"]["by_group"]
        ratios = {g: per[g].get("demographic_parity_ratio", {}).get("value") for g in a["groups"]}
        cis = {g: per[g].get("demographic_parity_ratio", {}).get("interval") for g in a["groups"]}
        out.append(
            (
                f"Selection rate ratio to the best {attr} group (four-fifths line)",
                charts.bars(
                    f"demographic parity ratio by {attr}",
                    ratios,
                    lo=0.0,
                    hi=1.2,
                    line=0.8,
                    cls="ratio",
                    intervals=cis,
                ),
            )
        )
        for metric in ("false_positive_rate", "true_positive_rate"):
            vals = {g: f[metric]["value"] for g, f in a["groups"].items()}
            cis = {g: f[metric]["interval"] for g, f in a["groups"].items()}
            out.append(
                (
                    f"{metric.replace('_', ' ')} by {attr}",
                    charts.bars(
                        f"{metric} by {attr}",
                        vals,
                        lo=0.0,
                        hi=1.0,
                        line=None,
                        cls="error-rate",
                        intervals=cis,
                    ),
                )
            )
    feats = cum["drift"]["features"]
    if feats:
        vals = {f: v["psi"] for f, v in feats.items()}
        hi = max([0.3] + [v for v in vals.values() if v is not None])
        out.append(
            (
                "PSI per feature (whole period against the reference)",
                charts.bars("PSI per feature", vals, lo=0.0, hi=hi, line=0.2, cls="psi"),
            )
        )
    return out


def html(rep: dict[str, Any], title: str = "Model card") -> str:
    m, gate = rep["model"], rep["gate"]
    parts = [
        '<!doctype html><html lang=en><head><meta charset=utf-8><link rel=icon href="data:,">',
        f"<title>{escape(title)}: {escape(str(m['name']))} {escape(str(m['version']))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}: {escape(str(m['name']))} {escape(str(m['version']))}</h1>",
        f"<p>Generated {escape(rep['generated_at'])}. Gate: "
        + (
            '<b class="pass" id="gate">passed</b>'
            if gate["passed"]
            else f'<b class="fail" id="gate">failed</b> ({escape(", ".join(gate["failed_rules"]))})'
        )
        + "</p>",
        '<div class="charts">',
    ]
    for caption, svg in chart_blocks(rep):
        parts.append(f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>")
    parts.append("</div>")
    for title_, header, rows in _tables(rep):
        tid = "alerts" if title_ == "Alerts" else ""
        parts.append(f"<h2>{escape(title_)}</h2><table{' id=alerts' if tid else ''}><thead><tr>")
        parts += [f"<th>{escape(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "".join(parts)
