"""Smoke runs of the benchmark pieces against real servers (no timing assertions)."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.bench_proxy import main as bench_main
from loadtests.bench_proxy import parse_set, round_ratio_ci, write_config
from loadtests.idle import idle_cpus
from loadtests.loadgen import LoadResult, build_request, run_load
from loadtests.payloads import V2_PATH, v2_requests
from loadtests.procs import FastUpstreamProcess, cpu_seconds
from sidecar.config import load_settings
from sidecar.demo.process import ModelServerProcess


@pytest.fixture(scope="module")
def fast_upstream() -> Iterator[str]:
    up = FastUpstreamProcess()
    url = up.start()
    yield url
    up.stop()


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def test_loadgen_against_the_fast_upstream(fast_upstream: str) -> None:
    host, port = _host_port(fast_upstream)
    reqs = [build_request(host, port, V2_PATH, b'{"inputs": []}')]
    result = await run_load(fast_upstream + V2_PATH, reqs, rate=200, duration_s=1.0, connections=4)
    summary = result.summary()
    assert summary["sent"] == 200
    assert summary["completed"] == 200 and summary["ok"] == 200
    assert summary["errors"] == 0 and summary["unanswered"] == 0
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]


async def test_payloads_are_valid_for_the_model_server() -> None:
    with ModelServerProcess() as server:
        host, port = _host_port(server.url)
        reqs = v2_requests(host, port, n=32)
        result = await run_load(server.url + V2_PATH, reqs, rate=100, duration_s=0.5, connections=2)
    assert result.statuses == {200: 50}


async def test_a_server_that_hangs_up_counts_as_errors_not_a_hang() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with server:
        reqs = [build_request("127.0.0.1", port, "/", b"{}")]
        result = await run_load(
            url + "/", reqs, rate=100, duration_s=0.5, connections=2, drain_timeout_s=1
        )
    assert not result.latencies
    # Each request in flight on a hung-up connection is an error; a new connection takes the
    # old one's place, and is hung up on in its turn.
    assert result.errors >= 2 and result.reconnects >= result.errors
    assert result.errors + result.unanswered == result.sent == 50


async def _read_request(reader: asyncio.StreamReader, head: bytes) -> None:
    """The body after `head` (the test servers' requests carry a content-length)."""
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


async def test_a_server_that_ends_keep_alive_gets_new_connections_and_no_errors() -> None:
    # nginx ends a client's connection after `keepalive_requests` (1,000) answers with
    # `Connection: close`; the generator must open another, as any client does.
    served = 0

    async def every_third_closes(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal served
        n = 0
        while True:
            await _read_request(reader, await reader.readuntil(b"\r\n\r\n"))
            n += 1
            served += 1
            close = n % 3 == 0
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                + (b"connection: close\r\n" if close else b"")
                + b"\r\n{}"
            )
            await writer.drain()
            if close:
                writer.close()
                return

    server = await asyncio.start_server(every_third_closes, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reqs = [build_request("127.0.0.1", port, "/", b"{}")]
        result = await run_load(
            f"http://127.0.0.1:{port}/", reqs, rate=200, duration_s=0.5, connections=2
        )
    assert result.statuses == {200: 100} and served == 100
    assert result.errors == 0 and result.unanswered == 0
    assert result.reconnects >= 30


async def test_an_answer_to_no_request_is_counted_apart_not_as_a_latency() -> None:
    # A server that times out a connection it found idle may answer 408 on it (the sidecar
    # did, to a pre-opened connection with no bytes, until 2026-12-01): that is no request's
    # answer. Counted as one, it was a latency from the clock's zero (p99.9 78,412,356 ms).
    async def answers_then_408s_the_idle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Keep-alive; a connection that has carried no request in 0.2 s gets a 408 and is
        # closed. The generator reuses its newest idle connection, so the ones it left idle
        # are never in use when theirs comes.
        first = True
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.2 if first else None)
            except TimeoutError:
                writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            first = False
            await _read_request(reader, head)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(answers_then_408s_the_idle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reqs = [build_request("127.0.0.1", port, "/", b"{}")]
        # Four connections, one request every 0.1 s: the ones left idle get the 408.
        result = await run_load(
            f"http://127.0.0.1:{port}/", reqs, rate=10, duration_s=1.0, connections=4
        )
    assert result.unsolicited >= 2
    assert 408 not in result.statuses
    assert result.errors == 0 and result.unanswered == 0
    assert max(result.latencies) < 1.0


def test_cpu_seconds_of_this_process_grows() -> None:
    import os

    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(3_000_000))
    assert cpu_seconds(os.getpid()) > before


def test_config_is_accepted_by_the_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    write_config(path, "http://127.0.0.1:9", parse_set(["decisions.queue_size=500"]))
    settings = load_settings(path, environ={})
    assert settings.proxy.upstream == "http://127.0.0.1:9"
    assert settings.proxy.port == 0 and settings.control.port == 0
    assert settings.model.name == "credit" and len(settings.model.feature_names) == 10
    assert settings.decisions.queue_size == 500


def test_parse_set_rejects_a_bare_key() -> None:
    with pytest.raises(SystemExit, match=r"section\.key=value"):
        parse_set(["rate=1"])
    with pytest.raises(SystemExit, match="no null"):
        parse_set(["sampling.low_confidence_below=null"])
    assert parse_set(["a.b=0.5", "a.c=files", "d.e=[1, 2]"]) == {
        "a": {"b": 0.5, "c": "files"},
        "d": {"e": [1, 2]},
    }


def test_bench_proxy_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(
        [
            "--scenario",
            "fast",
            # Enough requests that the bare proxy's CPU (about 30 µs each with idle CPUs
            # polling) spans several of /proc's 10 ms ticks.
            "--rate",
            "500",
            "--duration",
            "2",
            "--rounds",
            "1",
            "--no-pin",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "direct" in out and "sidecar CPU" in out and "bare byte-pipe proxy CPU" in out
    [result_file] = tmp_path.glob("proxy-fast-*.json")
    result = json.loads(result_file.read_text())
    assert result["direct"]["requests"] == 1000 and result["sidecar"]["requests"] == 1000
    assert result["direct"]["errors"] == 0 and result["sidecar"]["errors"] == 0
    assert result["sidecar"]["non_2xx"] == 0
    assert result["sidecar_cpu_us_per_req"] > 0
    # The bare proxy ran in the same rotation and answered every request it was sent.
    assert result["bare"]["requests"] == 1000 and result["bare"]["errors"] == 0
    assert result["bare_cpu_us_per_req"] > 0
    # So did nginx, the reference, and the sidecar's CPU is given as a ratio to both.
    assert result["nginx"]["requests"] == 1000 and result["nginx"]["errors"] == 0
    assert result["nginx"]["non_2xx"] == 0
    assert result["nginx_cpu_us_per_req"] > 0 and result["sidecar_cpu_ratio_to_nginx"] > 0
    assert "nginx CPU:" in out
    # Decision recording was on: every request through the sidecar became a decision.
    assert result["sidecar_metrics"]["sidecar_decisions_total"] >= 1000
    assert result["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))
    # The sidecar ran under the interpreter the run names, and the run says what idle CPUs did.
    assert result["machine"]["sidecar_python"]["version"] == result["machine"]["python"]
    assert result["idle_cpus"].startswith(("poll", "halt"))
    assert f"idle cpus: {result['idle_cpus']}" in out


def test_idle_cpus_holds_a_zero_latency_request_while_open(tmp_path: Path) -> None:
    # A plain file stands in for /dev/cpu_dma_latency: what is written, and when it is let go.
    qos = tmp_path / "cpu_dma_latency"
    qos.write_bytes(b"")
    driver = tmp_path / "current_driver"
    driver.write_text("haltpoll\n")
    with idle_cpus(poll=True, path=str(qos), driver_path=str(driver)) as how:
        assert how.startswith("poll") and "cpuidle driver haltpoll" in how
        assert qos.read_bytes() == struct.pack("=i", 0)
    absent = str(tmp_path / "absent")
    with idle_cpus(poll=True, path=absent, driver_path=str(driver)) as how:
        assert how.startswith("halt (could not hold")
    with idle_cpus(poll=False, path=str(qos), driver_path=str(driver)) as how:
        assert how.startswith("halt")


def test_idle_cpus_says_halt_when_no_cpuidle_driver_would_honour_the_request(
    tmp_path: Path,
) -> None:
    qos = tmp_path / "cpu_dma_latency"
    qos.write_bytes(b"")
    driver = tmp_path / "current_driver"
    driver.write_text("none\n")
    for driver_path in (str(driver), str(tmp_path / "no-such-file")):
        with idle_cpus(poll=True, path=str(qos), driver_path=driver_path) as how:
            assert how.startswith("halt (no cpuidle driver")
    assert qos.read_bytes() == b""  # nothing was held


def test_saturation_mode_steps_each_path_and_names_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench_main(
        [
            "--scenario",
            "fast",
            "--saturate",
            "--rates",
            "200,400",
            "--step-seconds",
            "1",
            "--no-pin",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "saturation: p99 <= 10.0 ms" in out
    [result_file] = tmp_path.glob("proxy-saturation-*.json")
    result = json.loads(result_file.read_text())
    assert set(result["paths"]) == {"direct", "sidecar", "bare", "nginx"}
    for name, path in result["paths"].items():
        assert path["steps"], name
        assert path["steps"][0]["rate"] == 200.0
        assert path["limit"]
        # Every step that passed is within the limits it claims.
        for step in path["steps"]:
            if step["ok"]:
                assert step["p99_ms"] <= 10.0 and step["rps"] >= 0.95 * step["rate"]


def _rounds(scale: float, n: int = 6) -> list[LoadResult]:
    out = []
    for r in range(n):
        res = LoadResult(rate=100.0, duration_s=1.0)
        # Each round a little different, as a machine's drift makes them.
        res.latencies = [scale * (1.0 + 0.05 * r) * (1 + i / 100.0) for i in range(100)]
        out.append(res)
    return out


def test_the_control_load_ratio_comes_with_an_interval_over_its_rounds() -> None:
    # The same rounds on both sides: the interval is exactly 1.0 (pairing keeps the drift).
    assert round_ratio_ci(_rounds(1.0), _rounds(1.0), 99) == (1.0, 1.0)
    # A working path 1.5x slower in every round: the interval sits at 1.5, excluding 1.0.
    lo, hi = round_ratio_ci(_rounds(1.0), _rounds(1.5), 99)
    assert lo == pytest.approx(1.5) and hi == pytest.approx(1.5)
    # One slow round of six (a burst): the interval spans 1.0, so the ratio is not
    # told apart from the noise by this run.
    working = _rounds(1.0)
    working[2].latencies = [x * 3.0 for x in working[2].latencies]
    lo, hi = round_ratio_ci(_rounds(1.0), working, 99)
    assert lo <= 1.0 < hi


def test_slow_requests_are_lined_up_against_the_control_calls() -> None:
    from loadtests.bench_proxy import tail_near_calls
    from loadtests.loadgen import LoadResult

    quiet = LoadResult(rate=1, duration_s=1, latencies=[0.002] * 100, starts=[0.0] * 100)
    # Requests every 10 ms from t0 = 100 s, 1 ms each; two of them 5 ms long.
    starts = [i * 0.01 for i in range(100)]
    lat = [0.001] * 100
    lat[10] = lat[50] = 0.005
    working = LoadResult(rate=1, duration_s=1, latencies=lat, starts=starts, t0=100.0)
    # One call from 100.095 to 100.099: request 10 (100.100-100.105) begins within 2 ms of
    # its end; request 9 (100.090-100.091) ended before it began; request 50 is far from it.
    near = tail_near_calls([quiet], [working], [(100.095, 100.099)])
    assert near["slow"] == 2 and near["slow_near_calls"] == 1
    assert near["share_of_slow_near_calls"] == 0.5
    assert near["share_of_all_near_calls"] == 0.01
    # Request 10 began in the margin after the call.
    assert near["near_by_phase"] == {
        "slow_before": 0,
        "slow_during": 0,
        "slow_after": 1,
        "all_before": 0,
        "all_during": 0,
        "all_after": 1,
    }
    # One call from 100.2905 to 100.3005: request 29 was in flight when it began, 30 began
    # during it.
    ph = tail_near_calls([quiet], [working], [(100.2905, 100.3005)])["near_by_phase"]
    assert (ph["all_before"], ph["all_during"], ph["all_after"]) == (1, 1, 0)
    # Two overlapping calls, the earlier one longer: a request after the later one's end
    # but within the earlier one's is near.
    near = tail_near_calls([quiet], [working], [(100.40, 100.52), (100.45, 100.46)])
    assert near["slow_near_calls"] == 1 and near["share_of_all_near_calls"] == 0.13
    assert tail_near_calls([quiet], [working], [])["slow_near_calls"] == 0
