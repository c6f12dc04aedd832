"""The `sidecar` command: one subcommand per module in sidecar/commands/."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("serve", "demo", "explain", "audit", "config", "outcomes", "hub", "monitor")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with `only` when it names one: a command's
    module may import what it runs with (pydantic, numba, kafka-python: up to a second
    together), which the other commands need not pay; `--help` still lists them all."""
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="An inference proxy that records, explains and routes model decisions.",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (only,) if only in COMMANDS else COMMANDS:
        try:
            module = importlib.import_module(f"sidecar.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sidecar.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _command_named(argv: list[str]) -> str | None:
    """The subcommand `argv` names (the first word that is not an option or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command_named(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
