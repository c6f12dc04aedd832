"""`sidecar hub --config FILE`: the fleet hub (Kafka consumer group -> PostgreSQL) and its API."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "hub", help="consume every replica's events into PostgreSQL; serve lookup and review"
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML settings file; SIDECAR_* variables override it"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    from explainers.errors import ExplainerError
    from sidecar.config import ConfigError, load_settings
    from sidecar.hub.service import Hub

    try:
        settings = load_settings(args.config)
        hub = Hub(settings)
    except ConfigError as exc:
        print(f"sidecar hub: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ExplainerError as exc:
        print(f"sidecar hub: cannot start: {exc}", file=sys.stderr)
        return 2
    except (psycopg.Error, TimeoutError) as exc:
        print(f"sidecar hub: cannot use the database (hub.database_url): {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sidecar hub: cannot listen: {exc}", file=sys.stderr)
        return 1
    print(f"hub: {hub.url}", flush=True)
    hub.run()
    return 0
