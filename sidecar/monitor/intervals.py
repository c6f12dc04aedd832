"""Confidence intervals: Wilson for a rate, Newcombe for a difference, Katz for a ratio.

Stated methods, all closed-form (no scipy at run time):
- a rate k/n: the Wilson score interval (Wilson 1927), which stays inside [0, 1] and
  behaves at small n and at rates near 0 or 1, unlike the normal approximation;
- a difference of two independent rates: Newcombe's hybrid score interval
  (Newcombe 1998, method 10), built from the two Wilson intervals;
- a ratio of two independent rates: the Katz log interval (Katz et al. 1978), with
  0.5 added to each cell of the 2x2 table when a count is zero (Haldane-Anscombe), so a
  group with no favourable prediction at all still gets an interval an alert can read.
"""

from __future__ import annotations

import math
from statistics import NormalDist

Interval = tuple[float, float]


def z_for(confidence: float) -> float:
    """The two-sided normal quantile for a confidence level (1.959964 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson(k: float, n: float, z: float) -> Interval | None:
    """Wilson score interval of k successes in n trials (None when n is 0)."""
    if n <= 0:
        return None
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1.0 - p) / n + z2 / (4.0 * n * n), 0.0))
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(k1: float, n1: float, k2: float, n2: float, z: float) -> Interval | None:
    """Newcombe's hybrid score interval of p1 - p2."""
    w1, w2 = wilson(k1, n1, z), wilson(k2, n2, z)
    if w1 is None or w2 is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    lo = d - math.sqrt((p1 - w1[0]) ** 2 + (w2[1] - p2) ** 2)
    hi = d + math.sqrt((w1[1] - p1) ** 2 + (p2 - w2[0]) ** 2)
    return (lo, hi)


def katz_ratio(k1: float, n1: float, k2: float, n2: float, z: float) -> Interval | None:
    """Katz log interval of p1 / p2 (None when a group is empty)."""
    if n1 <= 0 or n2 <= 0:
        return None
    if k1 == 0 or k2 == 0 or k1 == n1 or k2 == n2:
        k1, n1, k2, n2 = k1 + 0.5, n1 + 1.0, k2 + 0.5, n2 + 1.0
    p1, p2 = k1 / n1, k2 / n2
    se = math.sqrt(max((1.0 - p1) / k1 + (1.0 - p2) / k2, 0.0))
    centre = math.log(p1 / p2)
    return (math.exp(centre - z * se), math.exp(centre + z * se))
