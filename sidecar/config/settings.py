"""The settings tree and how it is read: a TOML file plus `SIDECAR_` environment overrides.

Read once at start (`load_settings`) and passed in; nothing else reads the
environment. Unknown keys, in the file or the environment, are refused with
a message that names them. Nested keys in the environment use `__`:
`SIDECAR_PROXY__UPSTREAM=http://127.0.0.1:9000`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from sidecar.config.errors import ENV_DELIMITER, ENV_PREFIX, ConfigError
from sidecar.config.secrets import masked_loc
from sidecar.config.sections import (
    AuthSettings,
    ContestSettings,
    ControlSettings,
    DecisionSettings,
    ExplainerSettings,
    GroupSettings,
    HubSettings,
    KafkaSettings,
    ModelSettings,
    MonitorSettings,
    OutcomeSettings,
    ProxySettings,
    ReasonSettings,
    RecourseSettings,
    ReviewSettings,
    SamplingSettings,
    SinkSettings,
    SpoolSettings,
)


class Settings(BaseSettings):
    """Everything the sidecar reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    # Factories, not shared instances: pydantic deep-copies a model default on every load.
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    decisions: DecisionSettings = Field(default_factory=DecisionSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    explainer: ExplainerSettings = Field(default_factory=ExplainerSettings)
    groups: GroupSettings = Field(default_factory=GroupSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    outcomes: OutcomeSettings = Field(default_factory=OutcomeSettings)
    reasons: ReasonSettings = Field(default_factory=ReasonSettings)
    recourse: RecourseSettings = Field(default_factory=RecourseSettings)
    contest: ContestSettings = Field(default_factory=ContestSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)

    def __init__(self, **values: Any) -> None:
        # load_settings lays the sources itself (the file, then EnvironSource over it), so
        # BaseSettings' own source building is skipped: it would read os.environ, and it
        # scans the whole environment on every instance (three quarters of a load's time).
        BaseModel.__init__(self, **values)


class EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ.

    Reading a mapping (not swapping os.environ) keeps loads thread-safe and lets
    tests pass their own environment. Only `SIDECAR_` names are kept, so the
    per-field scan does not walk the whole process environment.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Settings is case-insensitive (model_config), so names are compared lower-cased.
        return {k.lower(): v for k, v in self._environ.items() if k.upper().startswith(ENV_PREFIX)}


def _check_env_keys(environ: Mapping[str, str]) -> None:
    sections = Settings.model_fields
    for raw in environ:
        key = raw.upper()
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section, _, field = rest.partition(ENV_DELIMITER)
        if section not in sections:
            raise ConfigError(f"unknown environment variable {raw}: no section {section!r}")
        if field:
            model = sections[section].annotation
            name = field.partition(ENV_DELIMITER)[0]
            if (
                isinstance(model, type)
                and issubclass(model, BaseModel)
                and name not in model.model_fields
            ):
                replaced = getattr(model, "REMOVED", {}).get(name)
                if replaced:
                    raise ConfigError(
                        f"environment variable {raw}: {section}.{name} was removed; set {replaced}"
                    )
                raise ConfigError(f"unknown environment variable {raw}: no key {section}.{name}")


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + ENV_DELIMITER.join(str(p) for p in loc).upper()


def _describe(err: ValidationError, environ: Mapping[str, str]) -> str:
    # Never the input: pydantic keeps it in e["input"], and it may be a secret.
    env_names = {k.upper() for k in environ}
    lines = []
    for e in err.errors():
        parts = masked_loc(e["loc"])
        key = ".".join(parts)
        origin = ""
        # The variable may set the key itself or a table holding it (SIDECAR_AUTH__TOKENS='{...}').
        for n in range(len(parts), 0, -1):
            if _env_name(e["loc"][:n]) in env_names:
                origin = f" (from {_env_name(parts[:n])})"
                break
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"config key '{key}'{origin}: {msg}")
    return "; ".join(lines)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid onto `base`, tables merged key by key (the environment over the file)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    if not any(k.upper().startswith(ENV_PREFIX) for k in environ):
        return {}  # the source's per-field scan costs ~0.3 ms even with nothing to find
    try:
        return EnvironSource(environ)()
    except SettingsError:
        pass
    # A list or table value that is not JSON; pydantic-settings names only the section,
    # so find the variable by reading them one at a time (this path runs once, at a failure).
    for name, value in environ.items():
        try:
            EnvironSource({name: value})()
        except SettingsError:
            key = name[len(ENV_PREFIX) :].lower().replace(ENV_DELIMITER, ".")
            raise ConfigError(
                f"config key '{key}' (from {name}): not valid JSON (lists and tables are JSON here)"
            ) from None
    raise ConfigError("the SIDECAR_* environment variables do not parse together")


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if any), apply `SIDECAR_` overrides, validate; raise ConfigError naming the key.

    `environ` defaults to os.environ, which is only read, never changed.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    _check_env_keys(env)
    from_env = _read_environ(env)
    try:
        return Settings(**_merge(data, from_env))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env)) from None
