"""The waterfall SVG: the lookup's own numbers, valid XML, names escaped."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from sidecar.people.plot import BARS, waterfall_svg
from tests.people.people_helpers import AUDITOR, REVIEWER, Made

NS = {"s": "http://www.w3.org/2000/svg"}


def test_the_plot_draws_the_lookups_numbers(made: Made) -> None:
    did = made.id(made.denied[0])
    _, lookup, _ = made.get(f"/decisions/{did}", REVIEWER)
    status, svg, headers = made.get(f"/decisions/{did}/plot", AUDITOR)
    assert status == 200 and headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(svg)
    bars = root.findall("s:rect[s:title]", NS)
    phi = lookup["explanation"]["contributions"][0]
    drawn = [float(b.find("s:title", NS).text.rsplit(": ", 1)[1]) for b in bars]  # type: ignore[union-attr]
    expected = sorted(phi, key=lambda c: -abs(c))
    assert len(drawn) == len(phi) <= BARS
    assert all(
        math.isclose(d, e, rel_tol=1e-3, abs_tol=1e-6) for d, e in zip(drawn, expected, strict=True)
    )
    # Base value plus the contributions is the model's output, as the lookup says.
    texts = [t.text for t in root.findall("s:text", NS)]
    assert texts[-1] == f"{lookup['explanation']['margin'][0]:.4g}"


def test_many_features_are_summed_and_names_escaped() -> None:
    n = BARS + 5
    explanation = {
        "contributions": [[float(j + 1) for j in range(n)]],
        "base_values": [0.5],
        "margin": [0.5 + sum(range(1, n + 1))],
        "feature_names": ["<script>alert(1)</script>", *[f"f{j}" for j in range(1, n)]],
        "output_space": "margin",
    }
    svg = waterfall_svg(explanation, [1.0] * n, "a & b")
    assert "<script>" not in svg
    root = ET.fromstring(svg)
    labels = [t.text or "" for t in root.findall("s:text", NS)]
    assert "5 other features" in labels
    assert root.find("s:title", NS).text == "a & b"  # type: ignore[union-attr]
    assert len(root.findall("s:rect[s:title]", NS)) == BARS + 1
