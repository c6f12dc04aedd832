"""`sidecar config [--check FILE] [--reference]`: validate a settings file, or print every key."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sidecar.config import ConfigError, Settings, load_settings, masked_dump


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
    p = sub.add_parser(
        "config",
        help="print the effective settings, check a settings file, or print every key",
        description="With no option, print the effective settings (defaults and SIDECAR_* "
        "variables) with secrets masked.",
    )
    p.add_argument(
        "--check",
        metavar="FILE",
        help="validate FILE plus SIDECAR_* variables as `serve` does before it starts (token "
        "files, Kafka options, TLS files, writable paths, and the model artifact, loaded with "
        "its fidelity check), then print the effective settings with secrets masked",
    )
    p.add_argument("--reference", action="store_true", help="print every key as a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.reference:
        return _emit(reference_markdown())
    try:
        settings = load_settings(args.check)
    except ConfigError as exc:
        print(f"sidecar: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.check is not None:
        from explainers.errors import ExplainerError
        from sidecar.config.check import check_settings
        from sidecar.metrics import Registry
        from sidecar.pipeline.explain import build_explainer

        try:
            # The same two steps, in the same order, as the service before it binds.
            check_settings(settings)
            build_explainer(settings, Registry())
        except (ConfigError, ExplainerError) as exc:
            print(f"sidecar: bad configuration: {exc}", file=sys.stderr)
            return 2
    return _emit(json.dumps(masked_dump(settings), indent=2))


def _emit(text: str) -> int:
    """Print to stdout; a reader that stops early (`| head`) ends us quietly, as SIGPIPE would."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # As the Python docs advise (library/signal, "Note on SIGPIPE"): point stdout at
        # devnull so the interpreter's final flush does not raise again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    return 0
