"""The `sidecar` command loads only the subcommand it runs; `--help` still lists them all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import COMMANDS, _command_named


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["audit", "verify", "--db", "x"], "audit"),
        (["--log-level", "debug", "serve", "--config", "c"], "serve"),
        (["--log-level=debug", "demo"], "demo"),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_named_subcommand_is_found(argv: list[str], named: str | None) -> None:
    assert _command_named(argv) == named


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_subcommand() -> None:
    out = run("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_an_unknown_subcommand_is_refused_with_the_list() -> None:
    out = run("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr and "audit" in out.stderr


def test_audit_verify_with_a_database_imports_no_model_or_settings_library(tmp_path: Path) -> None:
    # `audit verify` runs beside a serving sidecar: what it imports is CPU taken from it.
    db = tmp_path / "review.db"
    code = (
        "import sys\n"
        "from sidecar.cli import main\n"
        f"rc = main(['audit', 'verify', '--db', {str(db)!r}])\n"
        "heavy = sorted(m for m in ('numba', 'numpy', 'pydantic', 'kafka', 'fastapi')"
        " if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # No database there: refused with exit 2, after parsing, which is what loads the modules.
    assert out.stdout.strip() == "2 []", out.stderr
