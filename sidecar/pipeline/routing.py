"""Which decisions go to human review: rules evaluated on the hot path.

Each rule is a comparison or a dict lookup on precomputed state, so `route`
costs about a microsecond. Samples (the audit sample and group rules given
as a rate) are deterministic by decision id: the same id always gets the
same answer, on any replica, which makes routing reproducible in tests and
audits.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from sidecar.config import ReviewSettings
from sidecar.decisions import Decision

ReviewMode = Literal["flag", "hold"]

_TRUTHY = frozenset({"1", "true", "yes", "on"})


def flag_set(value: str | bytes | None) -> bool:
    """A request flag header (`x-review`, `x-explain`) is set by 1, true, yes or on (any case)."""
    if value is None:
        return False
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.strip().lower() in _TRUTHY


_SCALE = float(1 << 64)
_MASK = (1 << 64) - 1


def id_hash(key: str) -> int:
    """64 bits of BLAKE2b of the decision id: computed once per decision, shared by all samples."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def sample_point(salt: int, h: int) -> float:
    """A uniform number in [0, 1) fixed by (salt, id hash): splitmix64's finaliser over both."""
    z = (h ^ salt) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) / _SCALE


def score_of(decision: Decision) -> float | None:
    """The score a band applies to: the positive-class probability, or a scalar prediction."""
    probs = decision.probabilities
    if probs is not None:
        if len(probs) == 2:
            return probs[1]
        if len(probs) == 1:
            return probs[0]
        return None
    pred = decision.prediction
    if isinstance(pred, int | float) and not isinstance(pred, bool):
        return float(pred)
    return None


class ReviewRouter:
    """Decides, per decision, whether it goes to review and why."""

    __slots__ = (
        "_always_groups",
        "_audit_rate",
        "_band",
        "_below",
        "_enabled",
        "_rate_groups",
        "header",
        "header_name",
        "mode",
        "status",
    )

    def __init__(self, settings: ReviewSettings) -> None:
        self._enabled = settings.enabled
        self.mode: ReviewMode = settings.mode
        # What the data plane sets on decision.review and sends in x-review-status.
        self.status = "held" if settings.mode == "hold" else "queued"
        self.header = settings.header
        self.header_name = settings.header.encode("latin-1")
        self._below = settings.confidence_below
        self._band = settings.band
        self._audit_rate = settings.audit_rate
        always: dict[tuple[str, str], str] = {}
        rates: dict[tuple[str, str], tuple[float, str, int]] = {}
        for key, rule in settings.group_rules.items():
            attr, _, value = key.partition("=")
            pair = (attr.strip(), value.strip())
            reason = f"group:{pair[0]}={pair[1]}"
            if rule is True:
                always[pair] = reason
            elif rule is not False and rule > 0:
                rates[pair] = (float(rule), reason, reason_salt(reason))
        self._always_groups = always
        self._rate_groups = rates

    @staticmethod
    def wants_review(value: str | bytes | None) -> bool:
        """True when the review header's value asks for review."""
        return flag_set(value)

    def route(self, decision: Decision, review_requested: bool) -> str | None:
        """The reason this decision goes to review, or None."""
        if not self._enabled:
            return None
        if review_requested:
            return "requested"
        conf = decision.confidence
        if self._below is not None and conf is not None and conf < self._below:
            return "low_confidence"
        if self._band is not None:
            score = score_of(decision)
            if score is not None and self._band[0] <= score <= self._band[1]:
                return "band"
        h = -1  # the id's hash, computed only if a sample needs it
        groups = decision.group_attributes
        if groups and (self._always_groups or self._rate_groups):
            for pair in groups.items():
                reason = self._always_groups.get(pair)
                if reason is not None:
                    return reason
                rated = self._rate_groups.get(pair)
                if rated is not None:
                    if h < 0:
                        h = id_hash(decision.decision_id)
                    if sample_point(rated[2], h) < rated[0]:
                        return rated[1]
        if self._audit_rate > 0:
            if h < 0:
                h = id_hash(decision.decision_id)
            if sample_point(_AUDIT_SALT, h) < self._audit_rate:
                return "audit_sample"
        return None


def reason_salt(reason: str) -> int:
    # Distinct salts keep a group sample and the audit sample independent of each other.
    return int.from_bytes(hashlib.blake2b(reason.encode(), digest_size=8).digest(), "big")


_AUDIT_SALT = reason_salt("audit_sample")
