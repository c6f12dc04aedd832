"""`sidecar outcomes load FILE`: CSV, JSON Lines and Parquet through the files sink; bad rows and bad files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidecar.cli import main
from sidecar.outcomes.load import CHUNK
from tests.eventlib import validate_event
from tests.outcomes.helpers import read_events

IDS = [f"0192f0c8a1b27{i:03x}8000000000000000/0" for i in range(3)]


def config(tmp_path: Path, labels: list[str] | None = None) -> Path:
    f = tmp_path / "sidecar.toml"
    model = f"[model]\nclass_labels = {json.dumps(labels)}\n" if labels else ""
    f.write_text(f'[sink]\ndirectory = "{tmp_path / "events"}"\n{model}')
    return f


def load(tmp_path: Path, data: Path, labels: list[str] | None = None) -> int:
    return main(["outcomes", "load", str(data), "--config", str(config(tmp_path, labels))])


def emitted(tmp_path: Path) -> list[dict[str, Any]]:
    return read_events(tmp_path / "events", "sidecar.outcomes")


def test_a_csv_file_is_loaded_through_the_files_sink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "truth.csv"
    data.write_text(
        "decision_id,outcome,observed_at,note\n"
        f"{IDS[0]},repaid,2026-12-01T10:00:00Z,first\n"
        f"{IDS[1]},default,2026-12-01T10:00:00.5-05:00,second\n"
    )
    assert load(tmp_path, data, ["default", "repaid"]) == 0
    out = capsys.readouterr().out
    assert "truth.csv: 2 rows, 2 emitted to sidecar.outcomes, 0 duplicates, 0 bad" in out
    found = emitted(tmp_path)
    for e in found:
        validate_event(e)
        assert e["source"] == "file:truth.csv" and e["decision_known"] is None
    assert [(e["decision_id"], e["outcome"], e["observed_at"]) for e in found] == [
        (IDS[0], "repaid", "2026-12-01T10:00:00.000000Z"),
        (IDS[1], "default", "2026-12-01T15:00:00.500000Z"),
    ]


def test_without_class_labels_a_csv_number_is_emitted_as_a_number(tmp_path: Path) -> None:
    data = tmp_path / "scores.csv"
    data.write_text(
        "decision_id,outcome,observed_at\n"
        f"{IDS[0]},1,2026-12-01T10:00:00Z\n"
        f"{IDS[1]},2.5e3,2026-12-01T10:00:00Z\n"
        f"{IDS[2]},late,2026-12-01T10:00:00Z\n"
    )
    assert load(tmp_path, data) == 0
    assert [e["outcome"] for e in emitted(tmp_path)] == [1, 2500.0, "late"]


def test_a_jsonl_file_with_bad_rows_loads_the_good_ones_and_names_the_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "truth.jsonl"
    rows = [
        json.dumps(
            {"decision_id": IDS[0], "outcome": "repaid", "observed_at": "2026-12-01T10:00:00Z"}
        ),
        "{not json",
        "",
        json.dumps(
            {"decision_id": IDS[1], "outcome": "lost", "observed_at": "2026-12-01T10:00:00Z"}
        ),
        json.dumps({"decision_id": IDS[2], "outcome": "default", "observed_at": "yesterday"}),
        json.dumps([1, 2]),
        json.dumps(
            {"decision_id": IDS[0], "outcome": "repaid", "observed_at": "2026-12-01T10:00:00Z"}
        ),
        json.dumps(
            {"decision_id": IDS[1], "outcome": "default", "observed_at": "2026-12-01T11:00:00Z"}
        ),
        '{"decision_id": "' + "x" * 70_000 + '"}',
        json.dumps({"decision_id": IDS[2], "outcome": "repaid"}),
    ]
    data.write_text("\n".join(rows) + "\n")
    assert load(tmp_path, data, ["default", "repaid"]) == 1
    captured = capsys.readouterr()
    assert "9 rows, 2 emitted to sidecar.outcomes, 1 duplicates, 6 bad" in captured.out
    err = captured.err.splitlines()
    assert [line.split(": ")[1] for line in err] == [
        "line 2",
        "line 4",
        "line 5",
        "line 6",
        "line 9",
        "line 10",
    ]
    assert "not JSON" in err[0] and "not one of model.class_labels" in err[1]
    assert "RFC 3339" in err[2] and "not a JSON object" in err[3] and "longer than" in err[4]
    assert err[5].endswith("line 10: missing observed_at")
    assert [(e["decision_id"], e["outcome"]) for e in emitted(tmp_path)] == [
        (IDS[0], "repaid"),
        (IDS[1], "default"),
    ]


def test_a_parquet_file_with_timestamps_is_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "truth.parquet"
    table = pa.table(
        {
            "decision_id": IDS,
            "outcome": ["repaid", "default", "repaid"],
            "observed_at": pa.array(
                [
                    datetime(2026, 12, 1, 10, tzinfo=UTC),
                    datetime(2026, 12, 1, 11, 0, 0, 250000, tzinfo=UTC),
                    datetime(2026, 12, 1, 13, tzinfo=timezone(timedelta(hours=1))),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "extra": [1, 2, 3],
        }
    )
    pq.write_table(table, data)
    assert load(tmp_path, data, ["default", "repaid"]) == 0
    assert "3 rows, 3 emitted" in capsys.readouterr().out
    assert [e["observed_at"] for e in emitted(tmp_path)] == [
        "2026-12-01T10:00:00.000000Z",
        "2026-12-01T11:00:00.250000Z",
        "2026-12-01T12:00:00.000000Z",
    ]
    # A naive timestamp says nothing of its zone, and a null is no time: bad rows, by number.
    naive = tmp_path / "naive.parquet"
    pq.write_table(
        pa.table(
            {
                "decision_id": IDS[:2],
                "outcome": ["repaid", "default"],
                "observed_at": pa.array([datetime(2026, 12, 1, 10), None], pa.timestamp("us")),
            }
        ),
        naive,
    )
    assert load(tmp_path, naive, ["default", "repaid"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{naive}: row 1: observed_at has no time zone offset",
        f"{naive}: row 2: observed_at must be an RFC 3339 string",
    ]


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("truth.xlsx", b"PK", "unknown format '.xlsx'"),
        ("truth.csv", b"decision_id,outcome\nx/0,repaid\n", "no column observed_at"),
        ("truth.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    ],
)
def test_a_bad_file_loads_nothing_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, why: str
) -> None:
    data = tmp_path / name
    data.write_bytes(content)
    assert load(tmp_path, data) == 2
    assert why in capsys.readouterr().err
    assert emitted(tmp_path) == []


def test_undecodable_bytes_and_an_overlong_field_are_bad_rows_and_the_rest_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "truth.csv"
    data.write_bytes(
        b"decision_id,outcome,observed_at\n"
        + f"{IDS[0]},repaid,2026-12-01T10:00:00Z\n".encode()
        + b"\xff\xfe/0,repaid,2026-12-01T10:00:00Z\n"
        + b"x/0,"
        + b"y" * 200_000
        + b",2026-12-01T10:00:00Z\n"
        + f"{IDS[1]},default,2026-12-01T10:00:00Z\n".encode()
    )
    assert load(tmp_path, data, ["default", "repaid"]) == 1
    captured = capsys.readouterr()
    assert "4 rows, 2 emitted" in captured.out
    err = captured.err.splitlines()
    assert err[0].startswith(f"{data}: line 3: decision_id must be")
    assert err[1] == f"{data}: line 4: field larger than field limit (131072)"
    assert [e["decision_id"] for e in emitted(tmp_path)] == IDS[:2]


def test_a_parquet_file_damaged_past_its_first_rows_keeps_those_and_says_where_it_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "truth.parquet"
    n = 2 * CHUNK
    table = pa.table(
        {
            "decision_id": [f"call{i}/0" for i in range(n)],
            "outcome": ["repaid"] * n,
            "observed_at": ["2026-12-01T10:00:00Z"] * n,
        }
    )
    pq.write_table(table, data, row_group_size=CHUNK, compression="none")
    # Garbage over the second row group's first page header.
    offset = pq.ParquetFile(data).metadata.row_group(1).column(0).data_page_offset
    raw = bytearray(data.read_bytes())
    raw[offset : offset + 32] = b"\xff" * 32
    data.write_bytes(bytes(raw))
    assert load(tmp_path, data, ["default", "repaid"]) == 1
    captured = capsys.readouterr()
    assert f"{CHUNK} rows, {CHUNK} emitted" in captured.out
    assert (
        f"stopped after {CHUNK} rows" in captured.err and "not a readable Parquet" in captured.err
    )
    assert len(emitted(tmp_path)) == CHUNK


def test_a_missing_file_and_a_bad_config_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load(tmp_path, tmp_path / "absent.csv") == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nfavourable_label = "x"\n')
    assert main(["outcomes", "load", str(tmp_path / "a.csv"), "--config", str(bad)]) == 2
    assert "favourable_label" in capsys.readouterr().err
