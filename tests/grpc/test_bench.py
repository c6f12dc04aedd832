"""loadtests/bench_grpc.py and grpc_hops.py run end to end: every path answered, calls decided."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtests.bench_grpc import main as bench_main
from loadtests.grpc_hops import main as hops_main

# The grpc-go generator and model server where there is a Go toolchain (built on first use).
GENERATORS = ["python", *(["go"] if shutil.which("go") else [])]


@pytest.mark.parametrize("generator", GENERATORS)
def test_bench_grpc_end_to_end(
    generator: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
            "--generator",
            generator,
            "--set",
            "sampling.rate=0",
            "--ab-set",
            "control.gil_switch_interval_ms=0.1",
            "--no-lock",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "direct" in out and "passthrough (no decision) added" in out
    assert "sidecar-b (control.gil_switch_interval_ms=0.1) added" in out
    [result_file] = tmp_path.glob("grpc-*.json")
    result = json.loads(result_file.read_text())
    assert result["generator"] == generator
    assert result["set"] == ["sampling.rate=0"]
    for path in ("direct", "sidecar", "passthrough", "sidecar-b"):
        assert result[path]["calls"] == 600, path
        assert result[path]["errors"] == {}, path
    assert result["sidecar_cpu_us_per_call"] > 0
    assert result["passthrough_cpu_us_per_call"] > 0
    assert result["sidecar_b_cpu_us_per_call"] > 0
    assert result["model_server_cpu_us_per_call"] > 0
    # Every call through the sidecar's ModelInfer became a decision: the round's, the
    # warm-up's and the one call each of those two loads opens its channel with; the
    # pass-through path's none.
    assert result["decisions"] == 600 + 40 + 2


def test_grpc_hops_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The compiled comparison where there is a Go toolchain (built on first use).
    kinds = ["aio", "sync-noee", "tap", "sidecar"] + (["go"] if shutil.which("go") else [])
    code = hops_main(
        [
            "--rate",
            "200",
            "--duration",
            "2",
            "--rounds",
            "1",
            "--warmup",
            "0.2",
            "--only",
            ",".join(kinds),
            "--out",
            str(tmp_path),
            "--no-lock",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    [result_file] = tmp_path.glob("grpc-hops-*.json")
    paths = json.loads(result_file.read_text())["paths"]
    # The two fixed-answer servers, then each proxy, every call answered through it.
    assert list(paths) == ["direct", "direct-noee", *kinds], out
    for name, path in paths.items():
        assert path["calls"] == 400, name
        assert path["errors"] == {}, name
        assert path["cpu_us_per_call"] > 0, name
