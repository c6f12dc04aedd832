"""loadtests/bench_grpc.py runs end to end: the three paths answered, the sidecar's calls decided."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.bench_grpc import main as bench_main


def test_bench_grpc_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(
        [
            "--rate",
            "200",
            "--duration",
            "3",
            "--rounds",
            "1",
            "--warmup",
            "0.2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "direct" in out and "passthrough (no decision) added" in out
    [result_file] = tmp_path.glob("grpc-*.json")
    result = json.loads(result_file.read_text())
    for path in ("direct", "sidecar", "passthrough"):
        assert result[path]["calls"] == 600, path
        assert result[path]["errors"] == {}, path
    assert result["sidecar_cpu_us_per_call"] > 0
    assert result["passthrough_cpu_us_per_call"] > 0
    # Every call through the sidecar's ModelInfer (warm-up included) became a decision; the
    # pass-through path's none.
    assert result["decisions"] == 600 + 40 + 1 + 1
