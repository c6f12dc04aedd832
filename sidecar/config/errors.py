"""What a bad setting raises, and the environment's naming."""

from __future__ import annotations

ENV_PREFIX = "SIDECAR_"
ENV_DELIMITER = "__"


class ConfigError(Exception):
    """Bad configuration: the message names the key."""
