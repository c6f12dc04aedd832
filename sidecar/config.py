"""The one settings tree: a TOML file plus `SIDECAR_` environment overrides.

Read once at start (`load_settings`) and passed in; nothing else reads the
environment. Unknown keys, in the file or the environment, are refused with
a message that names them. Nested keys in the environment use `__`:
`SIDECAR_PROXY__UPSTREAM=http://127.0.0.1:9000`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "SIDECAR_"
ENV_DELIMITER = "__"


class ConfigError(Exception):
    """Bad configuration: the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProxySettings(_Section):
    host: str = "127.0.0.1"
    """Data plane listen address."""
    port: int = Field(8080, ge=0, le=65535)
    """Data plane listen port (0 picks a free one)."""
    upstream: str = "http://127.0.0.1:9000"
    """The model server every request is forwarded to (scheme://host:port)."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Time allowed to open a connection to the upstream; past it the client gets 502."""
    timeout_s: float = Field(30.0, gt=0)
    """Time allowed for the upstream to answer; past it the client gets 504."""
    max_inference_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Inference calls are buffered up to this size so they can be parsed; larger ones get 413."""
    pool_size: int = Field(256, ge=1)
    """Pooled keep-alive connections to the upstream."""
    max_rows_per_request: int = Field(10_000, ge=1)
    """Rows beyond this in one call are forwarded but not recorded as decisions (counted)."""

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("must be scheme://host[:port] only; paths are taken from each request")
        return v.rstrip("/")


class ControlSettings(_Section):
    host: str = "127.0.0.1"
    """Control plane listen address."""
    port: int = Field(8081, ge=0, le=65535)
    """Control plane listen port (0 picks a free one)."""
    open_health: bool = True
    """Serve /healthz and /readyz without a token."""
    open_metrics: bool = True
    """Serve /metrics without a token."""


class ModelSettings(_Section):
    name: str | None = None
    """Model name for MLflow calls (their path carries none); others take it from the path."""
    version: str | None = None
    """Model version recorded on decisions when the call names none."""
    feature_names: list[str] = []
    """Feature names in the model's input order; without them features are named f0, f1, ..."""
    class_labels: list[str] = []
    """Labels of the classifier's classes, in probability order."""
    artifact: Path | None = None
    """The model file the server serves (ONNX, XGBoost JSON/UBJ, LightGBM text); enables explanations."""
    background: Path | None = None
    """Background data (Parquet or CSV) for node covers and interventional SHAP."""


class DecisionSettings(_Section):
    queue_size: int = Field(10_000, ge=1)
    """Bound of the queue between the hot path and the background stages; past it decisions are shed and counted."""
    retention: int = Field(100_000, ge=1)
    """Decisions kept for lookup by id (oldest forgotten first)."""


class SamplingSettings(_Section):
    """Which decisions get explained (owned by the explanation stage)."""


class ExplainerSettings(_Section):
    """The background TreeSHAP stage."""


class GroupSettings(_Section):
    """Group (protected) attributes: where they come from and the privacy policy."""


class SinkSettings(_Section):
    """Where events go: local files (default) or Kafka."""


class KafkaSettings(_Section):
    """The Kafka producer (used when sink.kind = "kafka")."""


class SpoolSettings(_Section):
    """The on-disk spool in front of Kafka."""


class ReviewSettings(_Section):
    """Routing rules and the review store."""

    enabled: bool = True
    """Route decisions to human review at all."""
    mode: Literal["flag", "hold"] = "flag"
    """flag: the model's answer goes back with `x-review-status: queued`; hold: the client gets 202 and a ticket."""
    confidence_below: float | None = Field(default=0.6, ge=0, le=1)
    """Decisions with confidence below this go to review (null turns the rule off)."""
    band: tuple[float, float] | None = None
    """[lo, hi]: decisions whose score (positive-class probability) lies inside go to review."""
    group_rules: dict[str, bool | float] = {}
    """"attr=value" -> true (always review) or a rate in [0, 1] (deterministic sample by decision id)."""
    header: str = "x-review"
    """Request header that asks for review of every row of the call (any value but 0/false/no)."""
    audit_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of decisions no other rule routed that go to review as a random audit sample."""
    db_path: Path = Path("var/review.db")
    """SQLite file (WAL mode) holding the queue and the audit chain."""
    lease_seconds: float = Field(default=300.0, gt=0, le=86_400)
    """How long a claim lasts before the item goes back to pending."""
    max_page_size: int = Field(default=100, ge=1, le=1000)
    """Largest page the review API returns."""
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request body the review API accepts (413 past it)."""
    max_reason_chars: int = Field(default=2000, ge=1)
    """Longest reason a reviewer may give."""
    explanation_cache_size: int = Field(default=10_000, ge=0)
    """On-demand explanations kept for decision lookups (least recently used dropped first)."""

    @field_validator("band")
    @classmethod
    def _check_band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError("must be [lo, hi] with 0 <= lo <= hi <= 1")
        return v

    @field_validator("group_rules")
    @classmethod
    def _check_group_rules(cls, v: dict[str, bool | float]) -> dict[str, bool | float]:
        for key, rule in v.items():
            attr, sep, value = key.partition("=")
            if not sep or not attr.strip() or not value.strip():
                raise ValueError(f"rule key {key!r} must be 'attribute=value'")
            if not isinstance(rule, bool) and not 0.0 <= rule <= 1.0:
                raise ValueError(f"rule {key!r}: rate must be true, false or in [0, 1]")
        return v

    @field_validator("header")
    @classmethod
    def _check_header(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v):
            raise ValueError("must be an HTTP header name")
        return v.lower()


class AuthSettings(_Section):
    """Control plane tokens and roles."""

    class Token(_Section):
        name: str = Field(min_length=1, max_length=128)
        """Who holds the token (recorded as the reviewer in the audit trail)."""
        role: Literal["reviewer", "auditor", "admin"]
        """What the token may do."""

    tokens: dict[str, Token] = {}
    """Bearer token (or "sha256:<hex digest>" of one) -> {name, role}."""
    tokens_file: Path | None = None
    """A TOML or JSON file with a `tokens` table of the same shape, read at start."""
    group_attribute_roles: list[Literal["reviewer", "auditor", "admin"]] = ["auditor", "admin"]
    """Roles that see decisions' group (protected) attributes."""


class Settings(BaseSettings):
    """Everything the sidecar reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    proxy: ProxySettings = ProxySettings()
    control: ControlSettings = ControlSettings()
    model: ModelSettings = ModelSettings()
    decisions: DecisionSettings = DecisionSettings()
    sampling: SamplingSettings = SamplingSettings()
    explainer: ExplainerSettings = ExplainerSettings()
    groups: GroupSettings = GroupSettings()
    sink: SinkSettings = SinkSettings()
    kafka: KafkaSettings = KafkaSettings()
    spool: SpoolSettings = SpoolSettings()
    review: ReviewSettings = ReviewSettings()
    auth: AuthSettings = AuthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file; the file arrives as init kwargs.
        return (env_settings, init_settings)


def _check_env_keys(environ: dict[str, str]) -> None:
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
            if isinstance(model, type) and issubclass(model, BaseModel) and name not in model.model_fields:
                raise ConfigError(f"unknown environment variable {raw}: no key {section}.{name}")


def _describe(err: ValidationError, environ: dict[str, str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        env_name = ENV_PREFIX + ENV_DELIMITER.join(str(p) for p in e["loc"]).upper()
        origin = f" (from {env_name})" if env_name in {k.upper() for k in environ} else ""
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"config key '{key}'{origin}: {msg}")
    return "; ".join(lines)


def load_settings(
    path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if any), apply `SIDECAR_` overrides, validate; raise ConfigError naming the key."""
    env = dict(os.environ if environ is None else environ)
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
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    try:
        # pydantic-settings reads os.environ; present exactly the environment we were given.
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)})
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env)) from None
    finally:
        for k in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
            del os.environ[k]
        os.environ.update(saved)

