"""Fixtures for the people tests (helpers in people_helpers.py)."""

from __future__ import annotations

from tests.people.people_helpers import made, model_server

__all__ = ["made", "model_server"]
