"""Outcomes in bulk from a file: CSV, JSON Lines or Parquet, through the configured sink.

The format comes from the suffix (`.csv`; `.jsonl`, `.ndjson`; `.parquet`,
`.pq`). Columns `decision_id`, `outcome` and `observed_at` are needed (others
are ignored). Rows are read and emitted in chunks, so a file of millions of
rows is never held whole. A bad row is reported with its place (`line N` of a
CSV or JSON Lines file, `row N` of a Parquet file, counting from 1) and the
others are still loaded. The same rules as `POST /outcomes` apply, with
`source = "file:<file name>"` and `decision_known = null` (no lookup store to
ask).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sidecar.outcomes.rules import FIELDS, InvalidOutcome, Outcome, OutcomeRules, Seen
from sidecar.sinks import EventSink
from sidecar.sinks.events import outcome_event, rfc3339

CHUNK = 1000
FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# A JSON Lines line longer than this is a bad row, not a reason to hold it in memory.
MAX_LINE_BYTES = 64 * 1024


class LoadError(Exception):
    """The file cannot be read at all (format, missing column, not found): nothing was loaded."""


@dataclass
class LoadSummary:
    rows: int = 0
    emitted: int = 0
    not_recorded: int = 0
    duplicates: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    stopped: str | None = None  # why the file could not be read to its end

    def line(self, path: Path, topic: str) -> str:
        return (
            f"outcomes: {path.name}: {self.rows} rows, {self.emitted} emitted to {topic}, "
            f"{self.duplicates} duplicates, {len(self.bad)} bad, "
            f"{self.not_recorded} not recorded"
        )


# Where, then (decision_id, outcome, observed_at) or why the row cannot be read.
Row = tuple[str, tuple[Any, Any, Any] | str]


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LoadError(
            f"{path}: unknown format {path.suffix!r}; use .csv, .jsonl/.ndjson or .parquet"
        )
    return fmt


def _missing(columns: object, path: Path) -> None:
    have = set(columns) if isinstance(columns, list | tuple) else set()
    missing = [c for c in FIELDS if c not in have]
    if missing:
        raise LoadError(f"{path}: no column {', '.join(missing)} (needs {', '.join(FIELDS)})")


def _csv_rows(path: Path) -> Iterator[Row]:
    # Bytes that are not UTF-8 become U+FFFD: the row they are in fails its checks alone.
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        _missing(reader.fieldnames, path)
        last = reader.line_num
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field past csv.field_size_limit(); the reader goes on
                yield f"line {last + 1}", str(exc)
                last += 1
                continue
            last = reader.line_num
            fields = (record["decision_id"], record["outcome"], record["observed_at"])
            yield f"line {last}", fields


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            where = f"line {n}"
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                yield where, f"line longer than {MAX_LINE_BYTES} bytes"
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield where, "not JSON"
                continue
            if not isinstance(obj, dict):
                yield where, "not a JSON object"
                continue
            missing = [c for c in FIELDS if c not in obj]
            if missing:
                yield where, f"missing {', '.join(missing)}"
                continue
            yield where, (obj.get("decision_id"), obj.get("outcome"), obj.get("observed_at"))


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        _missing(pf.schema_arrow.names, path)
        n = 0
        for batch in pf.iter_batches(batch_size=CHUNK, columns=list(FIELDS)):
            cols = [batch.column(c).to_pylist() for c in FIELDS]
            for did, value, observed in zip(*cols, strict=True):
                n += 1
                yield f"row {n}", (did, value, observed)
    except (pa.ArrowException, OSError) as exc:
        raise LoadError(f"{path}: not a readable Parquet file ({exc})") from None


def read_outcomes(path: Path, rules: OutcomeRules) -> Iterator[tuple[str, Outcome | str]]:
    """(where, the outcome or why the row is bad), row by row."""
    fmt = file_format(path)
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    rows = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}[fmt](path)
    try:
        for where, fields in rows:
            if isinstance(fields, str):
                yield where, fields
                continue
            did, value, observed = fields
            try:
                if fmt == "csv":
                    yield where, rules.check(did, rules.value_from_text(value or ""), observed)
                else:
                    yield where, rules.check(did, value, observed)
            except InvalidOutcome as exc:
                yield where, str(exc)
    except csv.Error as exc:
        raise LoadError(f"{path}: cannot read as {fmt}: {exc}") from None


def load_file(path: Path, rules: OutcomeRules, sink: EventSink) -> LoadSummary:
    """Read `path` and publish one outcome event per good, new row; the sink must be started."""
    summary = LoadSummary()
    seen = Seen()
    source = f"file:{path.name}"
    pending: list[tuple[str, dict[str, Any]]] = []

    def flush() -> None:
        accepted = sink.publish_many("outcome", pending)
        summary.emitted += accepted
        summary.not_recorded += len(pending) - accepted
        pending.clear()

    rows = read_outcomes(path, rules)
    while True:
        try:
            where, got = next(rows)
        except StopIteration:
            break
        except LoadError as exc:
            if not summary.rows:
                raise  # nothing read: nothing loaded
            # Rows before it are loaded: say where the file stopped making sense.
            summary.stopped = str(exc)
            break
        summary.rows += 1
        if isinstance(got, str):
            summary.bad.append((where, got))
            continue
        check = seen.add(got)
        if check == "duplicate":
            summary.duplicates += 1
            continue
        if check == "conflict":
            summary.bad.append((where, "another outcome for this decision_id came earlier"))
            continue
        body = outcome_event(
            decision_id=got.decision_id,
            outcome=got.outcome,
            observed_at=got.observed_at,
            received_at=rfc3339(),
            source=source,
            decision_known=None,
        )
        pending.append((got.decision_id, body))
        if len(pending) >= CHUNK:
            flush()
    if pending:
        flush()
    return summary
