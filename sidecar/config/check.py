"""What the settings name must exist and be usable: checked once, before any port opens.

`load_settings` checks values; `check_settings` checks what they point at (token
files, the Kafka producer's options and TLS files, the directories and files the
sinks, the spool and the review store will write). The service calls it before it
binds, and `sidecar config --check` calls the same function, so a file the check
accepts is not refused by `serve` for any of these reasons. The model artifact is
checked by loading it (`sidecar.pipeline.explain.build_explainer`), which both also do.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from sidecar.config import ConfigError, KafkaSettings, Settings

_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_settings(settings: Settings) -> None:
    """Raise ConfigError naming the key whose file, directory or option cannot be used."""
    from sidecar.control.auth import TokenTable
    from sidecar.people.catalogue import load_catalogue

    TokenTable.from_settings(settings.auth)  # reads auth.tokens_file, checks every token
    if settings.sink.kind == "kafka":
        from sidecar.sinks.kafka import producer_config

        producer_config(settings.kafka)  # kafka.extra names, codecs, timeouts, TLS files exist
        _check_kafka_tls(settings.kafka)
        _check_writable_dir("spool.directory", settings.spool.directory)
    elif settings.sink.kind == "files":
        _check_writable_dir("sink.directory", settings.sink.directory)
    _check_review_db(settings.review.db_path)
    load_catalogue(settings.reasons.catalogue, settings.model.feature_names)  # reasons.catalogue


def _check_writable_dir(key: str, path: Path) -> None:
    """`path` is a directory we may write in, or one we may create."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"config key '{key}': {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"config key '{key}': {existing} is not writable")


def _check_review_db(path: Path) -> None:
    key = "review.db_path"
    if str(path) == ":memory:":
        return
    if path.is_dir():
        raise ConfigError(f"config key '{key}': {path} is a directory")
    if not path.exists():
        _check_writable_dir(key, path.parent)
        return
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise ConfigError(f"config key '{key}': cannot read {path} ({exc.strerror})") from None
    # An empty file is what sqlite3 makes of a new database; anything else must be one.
    if head and head != _SQLITE_MAGIC:
        raise ConfigError(f"config key '{key}': {path} is not a SQLite database")
    if not os.access(path, os.W_OK):
        raise ConfigError(f"config key '{key}': {path} is not writable")


def _check_kafka_tls(k: KafkaSettings) -> None:
    # The producer loads these only when it first connects, on the delivery thread,
    # where a bad file becomes a logged retry loop rather than a refusal. Load them the
    # way kafka-python does (kafka/net/transport.py) so that they fail here instead.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if k.ssl_cafile is not None:
        try:
            ctx.load_verify_locations(str(k.ssl_cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"config key 'kafka.ssl_cafile': cannot load CA certificates from "
                f"{k.ssl_cafile} ({_reason(exc)})"
            ) from None
    if k.ssl_keyfile is not None and k.ssl_certfile is None:
        raise ConfigError("config key 'kafka.ssl_keyfile': needs kafka.ssl_certfile")
    if k.ssl_certfile is not None:
        password = k.ssl_password.get_secret_value() if k.ssl_password is not None else ""
        try:
            # A callable, so that an encrypted key without a password fails here instead
            # of OpenSSL asking on the terminal.
            ctx.load_cert_chain(
                str(k.ssl_certfile),
                str(k.ssl_keyfile) if k.ssl_keyfile is not None else None,
                password=lambda: password,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"config key 'kafka.ssl_certfile': cannot load the client certificate "
                f"{k.ssl_certfile} with its key ({_reason(exc)}; an encrypted key needs "
                "kafka.ssl_password)"
            ) from None


def _reason(exc: OSError | ssl.SSLError) -> str:
    # ssl.SSLError's reason is OpenSSL's short code (e.g. PEM_LIB); never the password.
    return str(getattr(exc, "reason", None) or exc.strerror or type(exc).__name__)
