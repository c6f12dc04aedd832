"""The one error hierarchy of the explainers package."""

from __future__ import annotations


class ExplainerError(Exception):
    """Base class: the message says what is wrong and with which file."""


class ModelLoadError(ExplainerError):
    """The artifact cannot be read as a supported tree ensemble."""


class FidelityError(ExplainerError):
    """The parsed ensemble does not reproduce the reference runtime's predictions."""


class InputError(ExplainerError):
    """Rows to explain do not fit the model (wrong feature count, non-numeric values)."""
