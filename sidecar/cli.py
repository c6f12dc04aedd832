"""The `sidecar` command: one subcommand per module in sidecar/commands/."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("serve", "demo", "explain", "audit", "config", "outcomes", "hub", "monitor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="An inference proxy that records, explains and routes model decisions.",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"sidecar.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sidecar.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
