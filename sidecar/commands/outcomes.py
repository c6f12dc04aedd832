"""`sidecar outcomes load FILE [--config FILE]`: ground truth in bulk, through the configured sink.

With `sink.kind = "files"` the events go to `<sink.directory>/<kafka.topic_outcomes>/`
(a file of its own, beside a running sidecar's); with `"kafka"` through a spool of
its own, `<spool.directory>-outcomes-load` (a running sidecar holds the lock on its
spool), and the command waits up to `--timeout` seconds for the broker's
acknowledgements: what is not acknowledged by then stays in that spool and is sent
by the next `sidecar outcomes load`. Prints one summary line; bad rows go to stderr
with their place. Exit status: 0 every row loaded, 1 some rows bad or not recorded,
the file unreadable past some point (the good rows before are loaded), or events still
waiting in the spool for the broker (run it again), 2 nothing
loaded (bad configuration, unknown format, missing column, unreadable file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sidecar.config import ConfigError, Settings, load_settings
from sidecar.sinks.spool_format import SpoolError

# Bad rows printed one per line; the rest are counted.
SHOWN_BAD_ROWS = 100


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("outcomes", help="ground truth for decisions")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser(
        "load", help="emit outcomes from a CSV, JSON Lines or Parquet file through the sink"
    )
    load.add_argument(
        "file", metavar="FILE", type=Path, help="columns decision_id, outcome, observed_at"
    )
    load.add_argument(
        "--config", metavar="FILE", help="TOML settings file; SIDECAR_* variables override it"
    )
    load.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for Kafka's acknowledgements (default 60)",
    )
    load.set_defaults(func=run_load)


def loader_settings(settings: Settings) -> Settings:
    """The settings with the spool moved to the loader's own directory (Kafka only)."""
    spool = settings.spool
    own = spool.model_copy(update={"directory": Path(f"{spool.directory}-outcomes-load")})
    return settings.model_copy(update={"spool": own})


def run_load(args: argparse.Namespace) -> int:
    from sidecar.metrics import Registry
    from sidecar.outcomes.load import LoadError, load_file
    from sidecar.outcomes.rules import OutcomeRules
    from sidecar.sinks import build_sink

    try:
        settings = loader_settings(load_settings(args.config))
    except ConfigError as exc:
        print(f"sidecar: bad configuration: {exc}", file=sys.stderr)
        return 2
    if settings.sink.kind == "none":
        print("sidecar: sink.kind is 'none': outcomes would be discarded", file=sys.stderr)
        return 2
    path: Path = args.file
    sink = build_sink(settings, Registry())
    try:
        sink.start()
    except (SpoolError, OSError) as exc:
        print(f"sidecar: cannot open the sink: {exc}", file=sys.stderr)
        return 2
    waiting = 0
    try:
        summary = load_file(path, OutcomeRules(settings.model.class_labels), sink)
        spool = getattr(sink, "spool", None)
        if spool is not None and not spool.wait_acked(spool.next_seq, args.timeout):
            waiting = spool.lag()
    except LoadError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    finally:
        sink.close(5.0)
    for where, why in summary.bad[:SHOWN_BAD_ROWS]:
        print(f"{path}: {where}: {why}", file=sys.stderr)
    if len(summary.bad) > SHOWN_BAD_ROWS:
        print(f"{path}: ... and {len(summary.bad) - SHOWN_BAD_ROWS} more bad rows", file=sys.stderr)
    if summary.stopped:
        print(f"sidecar: stopped after {summary.rows} rows: {summary.stopped}", file=sys.stderr)
    line = summary.line(path, settings.kafka.topic_outcomes)
    if waiting:
        line += f"; {waiting} not yet acknowledged, kept in {settings.spool.directory}"
    print(line, flush=True)
    return 1 if summary.bad or summary.not_recorded or summary.stopped or waiting else 0
