"""Tree models and exact TreeSHAP: loaders, one ensemble form, backends, cache, fidelity.

Knows nothing of HTTP or Kafka; the sidecar calls it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from explainers.errors import ExplainerError, FidelityError, InputError, ModelLoadError
from explainers.explanation import Explanation

__all__ = [
    "ExplainerError",
    "Explanation",
    "FidelityError",
    "InputError",
    "ModelLoadError",
    "__version__",
]
