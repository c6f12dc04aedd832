"""The notice: a plain-language page for the person a decision is about.

One document (`notice_document`) rendered as JSON or as a printable HTML page:
the decision, its date and reference, the principal reasons, what the person can
do (recourse), and how to contest. The page needs no script and loads nothing:
its one style sheet is inline, allowed by its hash in the page's own
Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from html import escape
from typing import Any

from sidecar.people.catalogue import Catalogue

_STYLE = """
body { font-family: Georgia, 'Times New Roman', serif; color: #111; background: #fff;
  max-width: 42rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; font-size: 1.05rem; }
h1 { font-size: 1.6rem; margin-bottom: .25rem; }
h2 { font-size: 1.2rem; margin-top: 1.75rem; border-bottom: 1px solid #555; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
dt { font-weight: bold; }
dd { margin: 0; }
.outcome { font-size: 1.2rem; font-weight: bold; }
.small { font-size: .9rem; color: #333; }
code { font-family: 'DejaVu Sans Mono', monospace; overflow-wrap: anywhere; }
@media print { body { margin: 0; max-width: none; } a { color: #111; } }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
NOTICE_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src data:; base-uri 'none';"
    " form-action 'none'; frame-ancestors 'none'"
)


def notice_document(
    decision: dict[str, Any],
    reasons: dict[str, Any],
    recourse: dict[str, Any] | None,
    catalogue: Catalogue,
    contest: dict[str, Any] | None,
) -> dict[str, Any]:
    """The notice as data (the JSON format, and what the HTML page shows)."""
    texts = catalogue.notice
    when = datetime.fromtimestamp(float(decision["time"]), UTC)
    favourable = bool(reasons["favourable"])
    return {
        "language": catalogue.language,
        "title": texts["title"],
        "reference": decision["decision_id"],
        "date": when.isoformat(timespec="seconds"),
        "model": {"name": decision.get("model_name"), "version": decision.get("model_version")},
        "outcome": reasons["outcome"],
        "favourable": favourable,
        "summary": texts["favourable"] if favourable else texts["unfavourable"],
        "reasons": [
            {"text": r["text"], "label": r["label"], "value": r["value"]}
            for r in reasons["reasons"]
        ],
        "reasons_note": reasons.get("note"),
        "recourse": None
        if favourable or recourse is None
        else {
            "intro": texts["recourse"] if recourse["options"] else texts["no_recourse"],
            "options": [
                [{"label": c["label"], "from": c["from"], "to": c["to"]} for c in o["changes"]]
                for o in recourse["options"]
            ],
            "caveat": texts["recourse_caveat"],
        },
        "contest": {
            "how": texts["contest"],
            "reference": decision["decision_id"],
            "filed": None
            if contest is None
            else {"at": contest["filed_at"], "status": contest["status"]},
        },
    }


def _value(v: Any) -> str:
    return "not given" if v is None else escape(f"{v:g}" if isinstance(v, float) else str(v))


def notice_html(doc: dict[str, Any]) -> str:
    """The printable page: headings in order, text only, readable without script or styles."""
    h = escape
    out = [
        "<!doctype html>",
        f'<html lang="{h(doc["language"])}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{h(doc['title'])}: {h(doc['reference'])}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{h(doc['title'])}</h1>",
        "<dl>",
        f'<dt>Decision</dt><dd class="outcome">{h(str(doc["outcome"]))}</dd>',
        f"<dt>Date</dt><dd>{h(doc['date'])}</dd>",
        f"<dt>Reference</dt><dd><code>{h(doc['reference'])}</code></dd>",
        "</dl>",
        '<section aria-labelledby="why">',
        '<h2 id="why">Why</h2>',
        f"<p>{h(doc['summary'])}</p>",
    ]
    if doc["reasons"]:
        out.append("<ol>")
        for r in doc["reasons"]:
            out.append(
                f'<li>{h(r["text"])} <span class="small">({h(r["label"])}: {_value(r["value"])})</span></li>'
            )
        out.append("</ol>")
    if doc.get("reasons_note") and not doc["favourable"]:
        out.append(f'<p class="small">{h(doc["reasons_note"])}</p>')
    out.append("</section>")
    rec = doc.get("recourse")
    if rec is not None:
        out += [
            '<section aria-labelledby="can-do">',
            '<h2 id="can-do">What you can do</h2>',
            f"<p>{h(rec['intro'])}</p>",
        ]
        if rec["options"]:
            out.append("<ul>")
            for changes in rec["options"]:
                said = " and ".join(
                    f"{h(c['label'])} from {_value(c['from'])} to {_value(c['to'])}"
                    for c in changes
                )
                out.append(f"<li>{said}</li>")
            out.append("</ul>")
        out += [f'<p class="small">{h(rec["caveat"])}</p>', "</section>"]
    contest = doc["contest"]
    out += [
        '<section aria-labelledby="contest">',
        '<h2 id="contest">How to contest this decision</h2>',
        f"<p>{h(contest['how'])}</p>",
        f"<p>Reference: <code>{h(contest['reference'])}</code></p>",
    ]
    if contest["filed"] is not None:
        out.append(
            f"<p>A contest was filed on {h(str(contest['filed']['at']))};"
            f" its review is {h(str(contest['filed']['status']))}.</p>"
        )
    out += ["</section>", "</main>", "</body>", "</html>"]
    return "\n".join(out)
