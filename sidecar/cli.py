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


def _batch_at_lowest_priority(argv: list[str]) -> None:
    """`sidecar audit verify` run as a program: the whole process at the lowest priority
    from its first line, unless `--normal-priority`.

    Its check lowers its own thread wherever it runs (`sidecar.commands.audit`), but the
    start before it (imports, arguments, opening the database: 40-90 ms of CPU on the
    project's VM) ran at the caller's priority; beside a serving sidecar (`kubectl exec`)
    that is the data plane's own. Only for the program: a caller of `main` in-process keeps
    its priority.
    """
    # `verify` is `audit`'s one action.
    if _command_named(argv) != "audit" or "--normal-priority" in argv:
        return
    import threading

    from sidecar.priority import LOWEST_NICE, lower_thread

    lower_thread(threading.get_native_id(), LOWEST_NICE, idle=True)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
        _batch_at_lowest_priority(argv)
    parser = build_parser(_command_named(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
