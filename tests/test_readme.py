"""The README stays the counterpart of the code: every settings key, the two commands, CI."""

from __future__ import annotations

from pathlib import Path

from sidecar.commands.config import reference

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_settings_key_is_documented_with_its_default() -> None:
    for key, default, _ in reference():
        assert f"| `{key}` | `{default}` |" in README, f"README lacks {key} (default {default})"


def test_ci_runs_the_readme_test_command_and_the_demo_command_is_shown() -> None:
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set "))
    ]
    assert ci == ["bash scripts/test.sh"]
    assert "bash scripts/test.sh" in README
    assert ".venv/bin/sidecar demo" in README
