"""`sidecar config`: `--check` refuses what `serve` refuses, secrets never show, `| head` is quiet.

Every refused case below used to pass `config --check` (exit 0) and stop `serve`
(or, for the Kafka TLS files, never work); both now go through `check_settings`.
The files are real files under tmp_path; nothing is mocked but the port binding,
which the service test forbids to show the refusal comes before any port opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import sidecar.service
from explainers.errors import ExplainerError
from sidecar.cli import main
from sidecar.config import ConfigError, load_settings
from sidecar.service import Service

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "sidecar" / "demo" / "assets"

# Long, distinctive values: a test finds them in any output that leaks them.
TOKEN = "inline-bearer-token-0123456789"
FILE_TOKEN = "file-bearer-token-abcdefghijkl"
SASL_PASSWORD = "sasl-password-zyxwvutsrq"
SSL_PASSWORD = "ssl-key-password-qponmlkji"
HASH_KEY = "groups-hash-key-hgfedcba987"
EXTRA_PASSWORD = "extra-sasl-password-5432109"
SECRETS = (TOKEN, FILE_TOKEN, SASL_PASSWORD, SSL_PASSWORD, HASH_KEY, EXTRA_PASSWORD)


Tables = dict[str, dict[str, Any]]


def _toml(tables: Tables) -> str:
    # JSON strings, numbers and lists are also TOML ones.
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v, default=str)}\n" for k, v in body.items())
        for name, body in tables.items()
    )


def _write(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _kafka(**kafka: Any) -> Tables:
    return {"sink": {"kind": "kafka"}, "kafka": kafka}


def _short_token(tmp: Path) -> Tables:
    return {'auth.tokens."short"': {"name": "x", "role": "admin"}}


def _tokens_file_missing(tmp: Path) -> Tables:
    return {"auth": {"tokens_file": tmp / "absent.toml"}}


def _tokens_file_bad_role(tmp: Path) -> Tables:
    f = _write(tmp, "tokens.toml", _toml({f'tokens."{FILE_TOKEN}"': {"name": "x", "role": "boss"}}))
    return {"auth": {"tokens_file": f}}


def _kafka_extra_unknown(tmp: Path) -> Tables:
    return {**_kafka(), "kafka.extra": {"no_such_option": 1}}


def _kafka_extra_acks(tmp: Path) -> Tables:
    return {**_kafka(), "kafka.extra": {"acks": 1}}


def _kafka_delivery_timeout(tmp: Path) -> Tables:
    return _kafka(delivery_timeout_ms=1000, request_timeout_ms=30000)


def _kafka_cafile_missing(tmp: Path) -> Tables:
    return _kafka(ssl_cafile=tmp / "absent.pem")


def _kafka_cafile_not_pem(tmp: Path) -> Tables:
    return _kafka(ssl_cafile=_write(tmp, "ca.pem", "not a certificate\n"))


def _kafka_keyfile_alone(tmp: Path) -> Tables:
    _, key = _client_cert(tmp, SSL_PASSWORD)
    return _kafka(ssl_keyfile=key, ssl_password=SSL_PASSWORD)


def _kafka_wrong_key_password(tmp: Path) -> Tables:
    cert, key = _client_cert(tmp, SSL_PASSWORD)
    return _kafka(ssl_certfile=cert, ssl_keyfile=key, ssl_password="wrong-password")


def _kafka_encrypted_key_without_password(tmp: Path) -> Tables:
    cert, key = _client_cert(tmp, SSL_PASSWORD)
    return _kafka(ssl_certfile=cert, ssl_keyfile=key)


def _spool_is_a_file(tmp: Path) -> Tables:
    return {**_kafka(), "spool": {"directory": _write(tmp, "spool", "x")}}


def _sink_under_a_file(tmp: Path) -> Tables:
    return {"sink": {"directory": _write(tmp, "file", "x") / "events"}}


def _review_db_is_a_directory(tmp: Path) -> Tables:
    (tmp / "db").mkdir()
    return {"review": {"db_path": tmp / "db"}}


def _review_db_not_sqlite(tmp: Path) -> Tables:
    return {"review": {"db_path": _write(tmp, "review.txt", "not a database")}}


def _artifact_missing(tmp: Path) -> Tables:
    return {"model": {"artifact": tmp / "absent.onnx"}}


def _artifact_unknown_format(tmp: Path) -> Tables:
    return {"model": {"artifact": _write(tmp, "model.bin", b"PK not a model")}}


def _background_missing(tmp: Path) -> Tables:
    return {"model": {"artifact": ASSETS / "model.onnx", "background": tmp / "absent.parquet"}}


Case = Callable[[Path], Tables]
REFUSED: list[tuple[Case, str]] = [
    (_short_token, "auth.tokens"),
    (_tokens_file_missing, "auth.tokens_file"),
    (_tokens_file_bad_role, "auth.tokens_file"),
    (_kafka_extra_unknown, "kafka.extra.no_such_option"),
    (_kafka_extra_acks, "kafka.extra.acks"),
    (_kafka_delivery_timeout, "kafka.delivery_timeout_ms"),
    (_kafka_cafile_missing, "kafka.ssl_cafile"),
    (_kafka_cafile_not_pem, "kafka.ssl_cafile"),
    (_kafka_keyfile_alone, "kafka.ssl_keyfile"),
    (_kafka_wrong_key_password, "kafka.ssl_certfile"),
    (_kafka_encrypted_key_without_password, "kafka.ssl_certfile"),
    (_spool_is_a_file, "spool.directory"),
    (_sink_under_a_file, "sink.directory"),
    (_review_db_is_a_directory, "review.db_path"),
    (_review_db_not_sqlite, "review.db_path"),
    (_artifact_missing, "absent.onnx"),
    (_artifact_unknown_format, "unknown model format"),
    (_background_missing, "absent.parquet"),
]
IDS = [case.__name__[1:] for case, _ in REFUSED]


def _config(tmp: Path, case: Case) -> Path:
    # Every path the checks look at points into tmp_path, never at ./var.
    tables: Tables = {
        "sink": {"directory": tmp / "events"},
        "spool": {"directory": tmp / "spool"},
        "review": {"db_path": tmp / "review.db"},
    }
    for name, body in case(tmp).items():
        tables.setdefault(name, {}).update(body)
    return _write(tmp, "sidecar.toml", _toml(tables))


def _client_cert(tmp: Path, password: str) -> tuple[Path, Path]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "kafka-ca.pem"))
    leaf = ca.issue_cert("sidecar-client")
    cert = tmp / "client.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )
    return cert, _write(tmp, "client-key.pem", encrypted)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def _no_sidecar_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("case", "names"), REFUSED, ids=IDS)
def test_check_refuses_what_serve_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: Case, names: str
) -> None:
    rc, out, err = _cli(capsys, "config", "--check", str(_config(tmp_path, case)))
    assert rc == 2, out
    assert names in err
    assert out == ""


@pytest.mark.parametrize(("case", "names"), REFUSED, ids=IDS)
def test_the_service_refuses_before_it_opens_a_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Case, names: str
) -> None:
    def no_bind(host: str, port: int) -> None:
        raise AssertionError(f"bound {host}:{port} before refusing the settings")

    monkeypatch.setattr(sidecar.service, "bind", no_bind)
    settings = load_settings(_config(tmp_path, case), environ={})
    with pytest.raises((ConfigError, ExplainerError), match=re.escape(names)):
        Service(settings)


def _good_config(tmp: Path) -> Path:
    cert, key = _client_cert(tmp, SSL_PASSWORD)
    tokens = _write(
        tmp, "tokens.json", json.dumps({"tokens": {FILE_TOKEN: {"name": "f", "role": "auditor"}}})
    )
    return _write(
        tmp,
        "sidecar.toml",
        f"""
[model]
artifact = "{ASSETS / "model.onnx"}"
background = "{ASSETS / "background.parquet"}"
[sink]
kind = "kafka"
[spool]
directory = "{tmp / "spool"}"
[review]
db_path = "{tmp / "new" / "review.db"}"
[kafka]
security_protocol = "SASL_SSL"
sasl_mechanism = "PLAIN"
sasl_username = "sidecar"
sasl_password = "{SASL_PASSWORD}"
ssl_cafile = "{tmp / "kafka-ca.pem"}"
ssl_certfile = "{cert}"
ssl_keyfile = "{key}"
ssl_password = "{SSL_PASSWORD}"
[kafka.extra]
sasl_plain_password = "{EXTRA_PASSWORD}"
[groups]
default_privacy = "hash"
hash_key = "{HASH_KEY}"
[auth]
tokens_file = "{tokens}"
[auth.tokens."{TOKEN}"]
name = "ops"
role = "admin"
""",
    )


def test_a_good_file_passes_and_no_secret_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _good_config(tmp_path)
    rc, out, err = _cli(capsys, "config", "--check", str(path))
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["kafka"]["sasl_password"] == "**********"
    assert shown["kafka"]["ssl_password"] == "**********"
    assert shown["kafka"]["extra"]["sasl_plain_password"] == "**********"
    assert shown["groups"]["hash_key"] == "**********"
    # The token is shown as the digest auth.tokens accepts in its place.
    assert list(shown["auth"]["tokens"]) == ["sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()]
    assert not [s for s in SECRETS if s in out + err]
    assert not [s for s in SECRETS if s in repr(load_settings(path, environ={}))]
    assert not (tmp_path / "spool").exists() and not (tmp_path / "new").exists()


def test_the_effective_settings_from_the_environment_mask_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_KAFKA__SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("SIDECAR_GROUPS__HASH_KEY", HASH_KEY)
    monkeypatch.setenv("SIDECAR_AUTH__TOKENS", json.dumps({TOKEN: {"name": "o", "role": "admin"}}))
    rc, out, err = _cli(capsys, "config")
    assert rc == 0, err
    assert json.loads(out)["kafka"]["sasl_password"] == "**********"
    assert not [s for s in SECRETS if s in out + err]


@pytest.mark.parametrize(
    ("toml", "environ", "names"),
    [
        (f'[auth.tokens."{TOKEN}"]\nname = "x"\nrole = "root"\n', {}, "auth.tokens.sha256:"),
        (f'[auth.tokens."{TOKEN}"]\nname = "x"\nrole = "admin"\nx = 1\n', {}, "unknown key"),
        (
            "",
            {"SIDECAR_AUTH__TOKENS": json.dumps({TOKEN: {"name": "x", "role": "root"}})},
            "(from SIDECAR_AUTH__TOKENS)",
        ),
        (f'[kafka]\nsasl_password = ["{SASL_PASSWORD}"]\n', {}, "kafka.sasl_password"),
        (f"[kafka]\nssl_password = {{ p = '{SSL_PASSWORD}' }}\n", {}, "kafka.ssl_password"),
        (f"[groups]\nhash_key = ['{HASH_KEY}']\n", {}, "groups.hash_key"),
        ("", {"SIDECAR_GROUPS": json.dumps({"hash_key": [HASH_KEY]})}, "(from SIDECAR_GROUPS)"),
    ],
    ids=[
        "token-key-bad-role",
        "token-key-unknown-field",
        "token-key-from-environment",
        "sasl-password-wrong-type",
        "ssl-password-wrong-type",
        "hash-key-wrong-type",
        "hash-key-from-environment",
    ],
)
def test_refusals_do_not_echo_secrets(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    toml: str,
    environ: dict[str, str],
    names: str,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    rc, out, err = _cli(capsys, "config", "--check", str(_write(tmp_path, "s.toml", toml)))
    assert rc == 2
    assert names in err
    assert not [s for s in SECRETS if s in out + err]


def test_a_refused_token_file_or_key_password_does_not_echo_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _write(tmp_path, "tokens.toml", f'[tokens."{FILE_TOKEN}"]\nname = ""\nrole = "admin"\n')
    rc, _, err = _cli(
        capsys,
        "config",
        "--check",
        str(_write(tmp_path, "a.toml", f'[auth]\ntokens_file = "{f}"\n')),
    )
    assert rc == 2 and "auth.tokens_file" in err and FILE_TOKEN not in err
    cert, key = _client_cert(tmp_path, "the-right-password")
    toml = (
        f'[sink]\nkind = "kafka"\ndirectory = "{tmp_path}"\n[review]\n'
        f'db_path = "{tmp_path / "r.db"}"\n[kafka]\nssl_certfile = "{cert}"\n'
        f'ssl_keyfile = "{key}"\nssl_password = "{SSL_PASSWORD}"\n'
    )
    rc, _, err = _cli(capsys, "config", "--check", str(_write(tmp_path, "b.toml", toml)))
    assert rc == 2 and "kafka.ssl_certfile" in err and SSL_PASSWORD not in err


def test_reference_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    # The reader is gone before the command writes a byte, as `| head` is once it has
    # its lines; before, print() raised BrokenPipeError and Python printed a traceback.
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "config", "--reference"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""
