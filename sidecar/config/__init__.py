"""The one settings tree: its sections, how it is read, how secrets are shown.

`load_settings` reads it once at start; the service passes it in. What the
settings point at (files, directories, options) is checked by
`sidecar.config.check.check_settings`, before any port opens.
"""

from __future__ import annotations

from sidecar.config.errors import ENV_DELIMITER, ENV_PREFIX, ConfigError
from sidecar.config.secrets import SECRET_MASK, mask_token, masked_dump, masked_extra
from sidecar.config.sections import (
    AuthSettings,
    ContestSettings,
    ControlSettings,
    DecisionSettings,
    ExplainerSettings,
    GroupSettings,
    HubModel,
    HubSettings,
    KafkaSettings,
    ModelSettings,
    OutcomeSettings,
    ProxySettings,
    ReasonSettings,
    RecourseSettings,
    ReviewSettings,
    SamplingSettings,
    SinkSettings,
    SpoolSettings,
)
from sidecar.config.settings import Settings, load_settings

__all__ = [
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "SECRET_MASK",
    "AuthSettings",
    "ConfigError",
    "ContestSettings",
    "ControlSettings",
    "DecisionSettings",
    "ExplainerSettings",
    "GroupSettings",
    "HubModel",
    "HubSettings",
    "KafkaSettings",
    "ModelSettings",
    "OutcomeSettings",
    "ProxySettings",
    "ReasonSettings",
    "RecourseSettings",
    "ReviewSettings",
    "SamplingSettings",
    "Settings",
    "SinkSettings",
    "SpoolSettings",
    "load_settings",
    "mask_token",
    "masked_dump",
    "masked_extra",
]
