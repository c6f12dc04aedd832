"""Tree models and exact TreeSHAP: loaders, one ensemble form, backends, cache, fidelity.

Knows nothing of HTTP or Kafka; the sidecar calls it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from explainers.errors import ExplainerError, FidelityError, InputError, ModelLoadError  # noqa: E402
from explainers.explanation import Explanation  # noqa: E402

__all__ = [
    "ExplainerError",
    "Explanation",
    "FidelityError",
    "InputError",
    "ModelLoadError",
    "__version__",
]
