"""The one error hierarchy of the explainers package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ExplainerError(Exception):
    """Base class: the message says what is wrong and with which file."""


class ModelLoadError(ExplainerError):
    """The artifact cannot be read as a supported tree ensemble."""


class FidelityError(ExplainerError):
    """The parsed ensemble does not reproduce the reference runtime's predictions."""


class InputError(ExplainerError):
    """Rows to explain do not fit the model (wrong feature count, non-numeric values)."""


@contextmanager
def converting(path: Path, what: str, malformed: tuple[type[Exception], ...]) -> Iterator[None]:
    """Errors while a loader converts `path` name the file: a ModelLoadError is prefixed with
    it, and the `malformed` exceptions (a well-formed file whose content no converter wrote)
    become "malformed `what`" ModelLoadErrors."""
    try:
        yield
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except malformed as exc:
        raise ModelLoadError(f"{path}: malformed {what} ({type(exc).__name__}: {exc})") from None
