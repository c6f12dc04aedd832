"""Fixtures for the review tests; the helpers they use live in review_helpers.py."""

from __future__ import annotations

from tests.review.review_helpers import demo_explainer, env, served

__all__ = ["demo_explainer", "env", "served"]
