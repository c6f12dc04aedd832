"""`sidecar monitor`: continuous monitoring of the event stream; `sidecar monitor report`: one period.

`report` exits 0, or 1 under `--gate` when a gating rule fires on the whole
period (so CI can block a promotion), or 2 on bad input.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from sidecar.config import ConfigError, Settings, load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "monitor", help="fairness, error rates, drift and alerts over the event stream"
    )
    p.add_argument("--config", help="TOML config file (the [monitor] and [model] sections)")
    p.set_defaults(func=run_continuous)
    actions = p.add_subparsers(dest="monitor_command", metavar="ACTION")
    r = actions.add_parser("report", help="one report over a period: the living model card")
    # SUPPRESS: `sidecar monitor --config F report ...` keeps F.
    r.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")
    r.add_argument(
        "--events", required=True, help="the files sink's folder, or a Kafka bootstrap host:port"
    )
    r.add_argument("--outcomes", help="outcomes file (CSV, JSON Lines or Parquet)")
    r.add_argument("--format", choices=("json", "md", "html"), default="json")
    r.add_argument("--out", required=True, help="where to write the report ('-': stdout)")
    r.add_argument("--gate", action="store_true", help="exit 1 when a gating rule fires")
    r.set_defaults(func=run_report)


def _settings(args: argparse.Namespace, name: str) -> Settings | None:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"sidecar monitor{name}: bad configuration: {exc}", file=sys.stderr)
        return None


def run_report(args: argparse.Namespace) -> int:
    # kafka-python's import takes a fifth of a second: only the monitor's own commands pay it.
    from kafka.errors import KafkaError

    from sidecar.monitor import render
    from sidecar.monitor.runner import report_once
    from sidecar.monitor.source import outcome_rows

    settings = _settings(args, " report")
    if settings is None:
        return 2
    try:
        outcomes = list(outcome_rows(Path(args.outcomes))) if args.outcomes else []
        rep: dict[str, Any] = report_once(settings, args.events, outcomes)
    except (OSError, ValueError, KafkaError) as exc:
        print(f"sidecar monitor report: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        data = orjson.dumps(rep, option=orjson.OPT_INDENT_2)
    elif args.format == "md":
        data = render.markdown(rep).encode()
    else:
        data = render.html(rep).encode()
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.out).write_bytes(data)
    if args.gate and not rep["gate"]["passed"]:
        print(
            f"sidecar monitor report: gate failed: {', '.join(rep['gate']['failed_rules'])}",
            file=sys.stderr,
        )
        return 1
    return 0


def run_continuous(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from sidecar.monitor.runner import Continuous

    settings = _settings(args, "")
    if settings is None:
        return 2
    source = settings.monitor.source or (
        settings.kafka.bootstrap_servers
        if settings.sink.kind == "kafka"
        else str(settings.sink.directory)
    )
    try:
        monitor = Continuous(settings, source)
    except (OSError, ValueError, KafkaError) as exc:
        print(f"sidecar monitor: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: monitor.stop())
    try:
        monitor.run()
    except KeyboardInterrupt:
        monitor.stop()
    if monitor.failed is not None:
        print(f"sidecar monitor: stopped: {monitor.failed}", file=sys.stderr)
        return 1
    return 0
