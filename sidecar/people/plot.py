"""A waterfall of one decision's contributions, as SVG drawn on the server.

From the same explanation the lookup serves: the base value, then each feature's
contribution (largest first, the rest summed into one bar), ending at the model's
output for the explained class. No script, no external asset; names are escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

BARS = 10
WIDTH = 760
ROW_H = 26
LEFT = 250  # room for the feature labels
RIGHT = 90  # room for the values
UP, DOWN = (
    "#b2182b",
    "#2166ac",
)  # red raises the output, blue lowers it (contrast >= 4.5:1 on white)


def _fmt(v: float) -> str:
    return f"{v:+.4g}"


def waterfall_svg(explanation: dict[str, Any], features: list[Any] | None, title: str) -> str:
    """The SVG document for one explanation."""
    contributions = explanation["contributions"]
    margin = explanation.get("margin") or [0.0] * len(contributions)
    out = max(range(len(contributions)), key=lambda k: margin[k]) if len(contributions) > 1 else 0
    phi = [float(c) for c in contributions[out]]
    base = float(explanation["base_values"][out])
    names = explanation.get("feature_names") or [f"f{j}" for j in range(len(phi))]
    order = sorted(range(len(phi)), key=lambda j: (-abs(phi[j]), j))
    shown, rest = order[:BARS], order[BARS:]
    steps: list[tuple[str, float]] = []
    for j in shown:
        value = features[j] if features is not None and j < len(features) else None
        label = (
            names[j]
            if value is None
            else f"{names[j]} = {value:.4g}"
            if isinstance(value, float)
            else f"{names[j]} = {value}"
        )
        steps.append((label, phi[j]))
    if rest:
        steps.append((f"{len(rest)} other features", sum(phi[j] for j in rest)))
    points = [base]
    for _, c in steps:
        points.append(points[-1] + c)
    lo, hi = min(points), max(points)
    span = (hi - lo) or 1.0
    plot_w = WIDTH - LEFT - RIGHT

    def x(v: float) -> float:
        return LEFT + (v - lo) / span * plot_w

    height = (len(steps) + 3) * ROW_H + 20
    space = escape(str(explanation.get("output_space", "margin")))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{height}"'
        f' viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">',
        f"<title>{escape(title)}</title>",
        f"<desc>Waterfall of feature contributions in {space} space, from the base value"
        f" {base:.4g} to the output {points[-1]:.4g}.</desc>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="18" font-weight="bold">{escape(title)} ({space})</text>',
    ]
    y = ROW_H + 4
    parts.append(f'<text x="8" y="{y + 17}">base value</text>')
    parts.append(f'<text x="{WIDTH - RIGHT + 6}" y="{y + 17}">{base:.4g}</text>')
    parts.append(
        f'<line x1="{x(base):.1f}" y1="{y}" x2="{x(base):.1f}" y2="{y + ROW_H}" stroke="#333"/>'
    )
    for i, (label, c) in enumerate(steps):
        y = (i + 2) * ROW_H + 4
        a, b = points[i], points[i + 1]
        left, w = min(x(a), x(b)), max(abs(x(b) - x(a)), 1.0)
        colour = UP if c >= 0 else DOWN
        parts.append(f'<text x="8" y="{y + 17}">{escape(label)}</text>')
        parts.append(
            f'<rect x="{left:.1f}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 8}" fill="{colour}">'
            f"<title>{escape(label)}: {_fmt(c)}</title></rect>"
        )
        parts.append(f'<text x="{WIDTH - RIGHT + 6}" y="{y + 17}" fill="{colour}">{_fmt(c)}</text>')
    y = (len(steps) + 2) * ROW_H + 4
    parts.append(f'<text x="8" y="{y + 17}" font-weight="bold">model output</text>')
    parts.append(
        f'<text x="{WIDTH - RIGHT + 6}" y="{y + 17}" font-weight="bold">{points[-1]:.4g}</text>'
    )
    end = x(points[-1])
    parts.append(f'<line x1="{end:.1f}" y1="{y}" x2="{end:.1f}" y2="{y + ROW_H}" stroke="#333"/>')
    parts.append("</svg>")
    return "\n".join(parts)
