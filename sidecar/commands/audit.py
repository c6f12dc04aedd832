"""`sidecar audit verify`: check the review audit chain.

Exit 0 when every record holds; 1 with a message naming the first bad record
(edited, deleted, reordered) or the truncation (against `--head`, a hash the
operator kept from an earlier `verify` or from GET /review/audit/head).

Verification is batch work that may run beside a serving sidecar (a `kubectl exec`
into its container runs it on the sidecar's own CPU): it reads and hashes the
whole chain. So it runs at the lowest scheduling priority (niceness `NICE` and
SCHED_IDLE, `sidecar.priority`): a data-plane thread waking on its core takes the
core at once; `--normal-priority` keeps the caller's. On Linux both are per thread,
so the check runs on a thread of its own that lowers only its own priority: a
program that calls `main` in-process keeps its priority. Run as the `sidecar`
program, the whole process is lowered from its first line (`sidecar.cli`), so its
start-up does not run at the caller's priority either.

Priority does not reach what the VM's cores share underneath, nor a sidecar in another
scheduling group (run from a login session of its own on a host where both are in the
root CPU cgroup, autogroup makes each session one: `sidecar.priority`), so the local
check is also paced: at most `LOCAL_RECORDS_PER_S` records a second by default (about
1.5% of a core here; `--max-records-per-s`, 0 for no limit). A hub's chain is checked
off the pods, against PostgreSQL, so `--hub` is not paced unless asked.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sidecar.priority import LOWEST_NICE, lower_thread
from sidecar.review import audit

NICE = LOWEST_NICE
# The local check's default pace: a chain of 20,000 review actions takes 20 s. Beside a
# serving sidecar on its one core, 2,000 a second (19 ms of CPU a second, most of it the
# wake-ups' cold caches) made every proxied request dearer: the data plane's own CPU per
# request +7%, its p50 1.07x (1.02-1.14) with nothing else running (2026-12-01 18:55).
# At 1,000 a second, with the scrapes and the console too: +2%, p50 1.01x (0.98-1.05),
# p99 1.03x (0.84-1.20) (19:10; loadtests/RESULTS.md).
LOCAL_RECORDS_PER_S = 1000

T = TypeVar("T")


def at_low_priority(fn: Callable[[], T], lower: bool = True) -> T:
    """Run `fn` on a thread of its own at niceness `NICE` under SCHED_IDLE (unless `lower`
    is false); its result."""
    if not lower:
        return fn()
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            lower_thread(threading.get_native_id(), NICE, idle=True)
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="audit-verify")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("audit", help="inspect the review audit trail")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check the hash chain of review actions")
    verify.add_argument("--config", help="TOML config file (for review.db_path)")
    verify.add_argument("--db", help="the review database (default: review.db_path)")
    verify.add_argument("--head", help="a head hash kept earlier; catches truncation")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument(
        "--hub",
        action="store_true",
        help="check the fleet hub's chain in PostgreSQL (hub.database_url) instead",
    )
    verify.add_argument(
        "--normal-priority",
        action="store_true",
        help=f"keep this process's scheduling priority (default: niceness {NICE}, so a check"
        " beside a serving sidecar does not take its CPU)",
    )
    verify.add_argument(
        "--max-records-per-s",
        type=_rate,
        default=None,
        metavar="N",
        help=f"check at most N records a second, 0 for no limit (default: {LOCAL_RECORDS_PER_S}"
        " for the local database, which sits beside a serving sidecar; no limit with --hub)",
    )
    verify.set_defaults(func=run_verify)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or a positive number: {text!r}")
    return value


def _verify_hub(args: argparse.Namespace, head: str | None) -> audit.VerifyResult | int:
    import psycopg

    from sidecar.config import ConfigError, load_settings
    from sidecar.hub import audit as hub_audit
    from sidecar.hub.db import connect
    from sidecar.hub.service import database_url

    try:
        url = database_url(load_settings(args.config))
    except ConfigError as exc:
        print(f"sidecar audit verify: {exc}", file=sys.stderr)
        return 2

    def check() -> audit.VerifyResult:
        with connect(url, application_name="sidecar-audit-verify") as conn:
            return hub_audit.verify(conn, head, args.max_records_per_s or 0)

    try:
        return at_low_priority(check, not args.normal_priority)
    except psycopg.Error as exc:
        print(f"sidecar audit verify: cannot read the hub database: {exc}", file=sys.stderr)
        return 2


def run_verify(args: argparse.Namespace) -> int:
    head = args.head.strip().lower() if args.head else None
    if args.hub:
        if head is not None and (len(head) != 64 or any(c not in "0123456789abcdef" for c in head)):
            print("sidecar audit verify: --head must be a 64-digit hex SHA-256", file=sys.stderr)
            return 2
        found = _verify_hub(args, head)
        if isinstance(found, int):
            return found
        return _report(args, found)
    if args.db is not None:
        path = Path(args.db)
    else:
        # Imported only here: the settings models take a third of a second to build, and
        # `--db` needs none of them.
        from sidecar.config import ConfigError, load_settings

        try:
            path = load_settings(args.config).review.db_path
        except ConfigError as exc:
            print(f"sidecar audit verify: {exc}", file=sys.stderr)
            return 2
    head = args.head.strip().lower() if args.head else None
    if head is not None and (len(head) != 64 or any(c not in "0123456789abcdef" for c in head)):
        print("sidecar audit verify: --head must be a 64-digit hex SHA-256", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"sidecar audit verify: no review database at {path}", file=sys.stderr)
        return 2

    def check() -> audit.VerifyResult:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            per_s = args.max_records_per_s
            return audit.verify(conn, head, LOCAL_RECORDS_PER_S if per_s is None else per_s)
        finally:
            conn.close()

    try:
        result = at_low_priority(check, not args.normal_priority)
    except sqlite3.DatabaseError as exc:
        print(f"sidecar audit verify: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    return _report(args, result)


def _report(args: argparse.Namespace, result: audit.VerifyResult) -> int:
    if args.json:
        print(json.dumps(result.to_dict()))
    elif result.ok:
        print(f"ok: {result.count} records, head seq {result.head_seq} hash {result.head_hash}")
    else:
        print(f"TAMPERED: {result.error}", file=sys.stderr)
        print(f"the chain holds up to seq {result.head_seq} (hash {result.head_hash})")
    return 0 if result.ok else 1
