"""Server-side SVG charts for the model card and the dashboard: no script, no external asset.

Every text node is escaped; colours come from one fixed palette per group
order, so the same group has the same colour across charts.
"""

from __future__ import annotations

from html import escape
from typing import Any

PALETTE = ("#1b6ca8", "#d1495b", "#edae49", "#00798c", "#6a4c93", "#3d405b", "#81b29a", "#8d6a9f")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 260, 48, 120, 16, 36


def _y(v: float, lo: float, hi: float) -> float:
    return PAD_T + (H - PAD_T - PAD_B) * (1.0 - (v - lo) / ((hi - lo) or 1.0))


def _frame(title: str, body: list[str], lo: float, hi: float, cls: str) -> str:
    ticks = []
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = _y(v, lo, hi)
        ticks.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{v:.2f}</text>'
        )
    return (
        f'<svg class="chart {cls}" role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {H}"'
        f' width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">'
        f"<title>{escape(title)}</title>{''.join(ticks)}{''.join(body)}</svg>"
    )


def rate_over_time(windows: list[dict[str, Any]], attribute: str, metric: str) -> str:
    """One line per group across windows, with its interval as a band."""
    groups: list[str] = sorted(
        {g for w in windows for g in w["attributes"].get(attribute, {}).get("groups", {})}
    )
    n = max(len(windows), 1)
    step = (W - PAD_L - PAD_R) / max(n - 1, 1)
    body = []
    for gi, g in enumerate(groups):
        colour = PALETTE[gi % len(PALETTE)]
        pts, upper, lower = [], [], []
        for i, w in enumerate(windows):
            f = w["attributes"].get(attribute, {}).get("groups", {}).get(g, {}).get(metric)
            if f and f["value"] is not None:
                x = PAD_L + i * step
                pts.append((x, _y(f["value"], 0, 1)))
                upper.append((x, _y(f["interval"][1], 0, 1)))
                lower.append((x, _y(f["interval"][0], 0, 1)))
        if not pts:
            continue
        band = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower[::-1])
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        body.append(
            f'<polygon class="band" data-group="{escape(g)}" points="{band}" fill="{colour}" fill-opacity="0.15"/>'
            f'<polyline class="line" data-group="{escape(g)}" points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>'
            + "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts)
            + f'<text x="{W - PAD_R + 8}" y="{PAD_T + 14 + 16 * gi}" fill="{colour}" font-size="12">{escape(g)}</text>'
        )
    for i, w in enumerate(windows):
        if n <= 8 or i % (n // 8 + 1) == 0:
            body.append(
                f'<text x="{PAD_L + i * step:.1f}" y="{H - 12}" text-anchor="middle" font-size="10">{escape(w["start"][:16])}</text>'
            )
    return _frame(f"{metric} by {attribute} per window", body, 0.0, 1.0, "over-time")


def _fit(name: str, width: float) -> str:
    """The label cut to what fits under its bar (about 6.5 px a character at 11 px)."""
    room = max(int(width / 6.5), 3)
    return name if len(name) <= room else name[: room - 1] + "…"


def bars(
    title: str,
    values: dict[str, float | None],
    *,
    lo: float,
    hi: float,
    line: float | None,
    cls: str,
    intervals: dict[str, list[float] | None] | None = None,
) -> str:
    """One bar per name, an optional reference line (the 0.8 rule, a PSI threshold)."""
    names = list(values)
    slot = (W - PAD_L - PAD_R) / max(len(names), 1)
    body = []
    for i, name in enumerate(names):
        v = values[name]
        x = PAD_L + i * slot + slot * 0.15
        if v is not None:
            top, base = _y(min(max(v, lo), hi), lo, hi), _y(max(lo, 0.0), lo, hi)
            y, h = min(top, base), abs(base - top)
            fill = PALETTE[i % len(PALETTE)]
            body.append(
                f'<rect class="bar" data-name="{escape(name)}" data-value="{v:.6g}" x="{x:.1f}" y="{y:.1f}"'
                f' width="{slot * 0.7:.1f}" height="{h:.1f}" fill="{fill}"/>'
            )
            ci = (intervals or {}).get(name)
            if ci:
                cx = x + slot * 0.35
                body.append(
                    f'<line class="ci" x1="{cx:.1f}" x2="{cx:.1f}" y1="{_y(min(ci[1], hi), lo, hi):.1f}"'
                    f' y2="{_y(max(ci[0], lo), lo, hi):.1f}" stroke="#222" stroke-width="1.5"/>'
                )
        body.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{H - 20}" text-anchor="middle" font-size="11">'
            f"<title>{escape(name)}</title>{escape(_fit(name, slot))}</text>"
        )
    if line is not None:
        y = _y(line, lo, hi)
        body.append(
            f'<line class="threshold" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"'
            f' stroke="#c00" stroke-dasharray="6 4" stroke-width="1.5"/>'
            f'<text x="{W - PAD_R + 6}" y="{y + 4:.1f}" fill="#c00" font-size="11">{line:g}</text>'
        )
    return _frame(title, body, lo, hi, cls)
