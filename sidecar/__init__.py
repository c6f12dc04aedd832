"""The explaining sidecar: a transparent inference proxy that records, explains and routes decisions."""

from __future__ import annotations

__version__ = "0.1.0"
