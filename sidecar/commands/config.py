"""`sidecar config [--check FILE] [--reference]`: validate a settings file, or print every key."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sidecar.config import ConfigError, Settings, load_settings


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "(required)"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=str)


def reference() -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting, in declaration order."""
    rows = []
    for section, sfield in Settings.model_fields.items():
        model = sfield.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, field in model.model_fields.items():
            doc = (field.description or "").replace("\n", " ").replace("|", "\\|")
            rows.append((f"{section}.{name}", _default(field), doc))
    return rows


def reference_markdown() -> str:
    lines = ["| key | default | what it does |", "| --- | --- | --- |"]
    for key, default, doc in reference():
        lines.append(f"| `{key}` | `{default}` | {doc} |")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="check a settings file, or print the reference of every key")
    p.add_argument("--check", metavar="FILE", help="validate FILE plus SIDECAR_* variables")
    p.add_argument("--reference", action="store_true", help="print every key as a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
        return 0
    try:
        settings = load_settings(args.check)
    except ConfigError as exc:
        print(f"sidecar: bad configuration: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0
