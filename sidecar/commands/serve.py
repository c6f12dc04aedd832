"""`sidecar serve [--config FILE]`: run the data plane and the control plane."""

from __future__ import annotations

import argparse
import sys

from explainers.errors import ExplainerError
from sidecar.config import ConfigError, load_settings
from sidecar.sinks.spool_format import SpoolError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the proxy (data plane) and the control plane")
    p.add_argument(
        "--config", metavar="FILE", help="TOML settings file; SIDECAR_* variables override it"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sidecar.control.supervisor import ControlProcessError
    from sidecar.service import Service, new_event_loop
    from sidecar.workers.supervisor import WorkersError

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"sidecar: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        service = Service(settings)
    except (ConfigError, ExplainerError) as exc:
        print(f"sidecar: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sidecar: cannot listen: {exc}", file=sys.stderr)
        return 1
    print(f"proxy: {service.proxy_url} -> {settings.proxy.upstream}", flush=True)
    print(f"control: {service.control_url}", flush=True)
    loop = new_event_loop()
    try:
        loop.run_until_complete(service.run())
    except SpoolError as exc:
        # The spool is opened when the service starts (it is locked, read, recovered then).
        print(f"sidecar: cannot start: {exc}", file=sys.stderr)
        return 2
    except ControlProcessError as exc:
        print(f"sidecar: control plane: {exc}", file=sys.stderr)
        return 1
    except WorkersError as exc:
        print(f"sidecar: workers: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0
