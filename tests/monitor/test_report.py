"""`sidecar monitor report` over a files-sink folder: alerts, the gate, drift against popmon and scipy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from popmon.analysis.comparison.comparisons import population_stability_index
from scipy.stats import ks_2samp

from sidecar.cli import main
from sidecar.metrics import Registry
from sidecar.monitor.drift import load_reference
from sidecar.sinks.files import FileSink, RotatingFile
from tests.monitor.gen import FEATURES, Generated, generate

RULES = [
    {"name": "four_fifths", "metric": "demographic_parity_ratio", "below": 0.8, "use": "interval"},
    {"name": "equalized_odds", "metric": "equalized_odds_difference", "above": 0.1},
    {"name": "psi", "metric": "psi", "above": 0.2, "gate": False},
    {"name": "attribution", "metric": "top_features", "k": 2, "gate": False},
]
KIND_OF = {"decision": "decision", "explanation": "explanation", "review": "review", "gap": "gap"}


def write_folder(folder: Path, events: list[dict[str, Any]]) -> None:
    """The events as the files sink writes them (outcomes as the outcomes writer does)."""
    sink = FileSink(
        folder,
        {
            "decision": "sidecar.decisions",
            "explanation": "sidecar.explanations",
            "review": "sidecar.reviews",
            "gap": "sidecar.gaps",
        },
        Registry(),
        rotate_bytes=256 * 1024,
        rotate_interval_s=3600.0,
        keep_files=1000,
    )
    outcomes = RotatingFile(folder / "sidecar.outcomes", 1 << 30, 3600.0, 1000)
    for ev in events:
        if ev["event_type"] == "outcome":
            outcomes.write(orjson.dumps(ev) + b"\n")
        else:
            sink.publish(ev["event_type"], ev.get("decision_id", ""), ev)  # type: ignore[arg-type]
    sink.close()
    outcomes.close()


def write_reference(path: Path, data: Generated) -> None:
    cols = {f: pa.array(data.features[:, j]) for j, f in enumerate(FEATURES)}
    pq.write_table(pa.table(cols), path)


def write_config(path: Path, reference: Path, **monitor: Any) -> None:
    lines = [
        "[model]",
        f"feature_names = {orjson.dumps(FEATURES).decode()}",
        'class_labels = ["default", "repaid"]',
        'favourable_label = "repaid"',
        "[monitor]",
        'window = "1d"',
        "min_group_size = 30",
        f'reference = "{reference}"',
    ]
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in monitor.items()]
    for rule in RULES:
        lines.append("[[monitor.alerts]]")
        lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in rule.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Generated, Path]:
    root = tmp_path_factory.mktemp("shifted")
    data = generate(6000, seed=5, shift=0.3, feature_shift_day=1, shap_swap_day=2)
    data.events.append(
        {
            "event_type": "gap",
            "event_id": "gap-1",
            "reason": "queue_full",
            "by_kind": {"decision": 12, "explanation": 3},
            "decision_ids": [],
        }
    )
    write_folder(root / "events", data.events)
    write_reference(root / "reference.parquet", generate(4000, seed=99))
    write_config(root / "monitor.toml", root / "reference.parquet")
    return root, data, root / "monitor.toml"


def run_report(root: Path, config: Path, fmt: str = "json", gate: bool = True) -> tuple[int, Path]:
    out = root / f"report.{fmt}"
    argv = ["monitor", "report", "--config", str(config), "--events", str(root / "events")]
    argv += ["--format", fmt, "--out", str(out)] + (["--gate"] if gate else [])
    return main(argv), out


@pytest.fixture(scope="module")
def rep(shifted: tuple[Path, Generated, Path]) -> dict[str, Any]:
    root, _, config = shifted
    code, out = run_report(root, config)
    assert code == 1  # the four-fifths and equalized-odds rules gate, and they fire
    body: dict[str, Any] = orjson.loads(out.read_bytes())
    return body


def test_fairness_alerts_name_the_shifted_group_only(rep: dict[str, Any]) -> None:
    fair = [a for a in rep["alerts"] if a["rule"] in ("four_fifths", "equalized_odds")]
    assert fair, "the shifted group raised no alert"
    for a in fair:
        assert a["attribute"] in ("gender", "age_band")
        assert a["attribute"] == "gender", a
        assert a["groups"][0] == "C" if a["rule"] == "four_fifths" else "C" in a["groups"]
    windows = {a["window"]["start"] for a in fair if a["window"] != "cumulative"}
    assert len(windows) == 3  # every day's window, not only the period
    assert rep["gate"] == {"passed": False, "failed_rules": ["equalized_odds", "four_fifths"]}
    assert all(a["interval"][1] < 0.8 for a in fair if a["rule"] == "four_fifths")


def test_gaps_and_traffic_are_reported(
    rep: dict[str, Any], shifted: tuple[Path, Generated, Path]
) -> None:
    t = rep["traffic"]
    assert t["decisions"] == 6000
    assert t["gaps"] == {"records": 1, "decisions_missing": 12, "by_reason": {"queue_full": 1}}
    assert t["coverage"] == pytest.approx(6000 / 6012)
    assert t["outcomes"] == int((shifted[1].y_true >= 0).sum())
    assert t["waiting"]["outcomes"] == 0 and t["invalid"] == 0


def test_psi_equals_popmon_and_ks_equals_scipy(
    rep: dict[str, Any], shifted: tuple[Path, Generated, Path]
) -> None:
    root, data, _ = shifted
    ref = load_reference(root / "reference.parquet", FEATURES, 10)
    ref_rows = generate(4000, seed=99).features
    for day, window in enumerate(rep["windows"]):
        cur = data.features[data.day == day]
        for j, f in enumerate(FEATURES):
            bins = np.concatenate([[-np.inf], ref.edges[j], [np.inf]])
            # numpy bins are [a, b); the monitor's are too (bisect_right): same counts.
            p = np.histogram(ref_rows[:, j], bins)[0] / len(ref_rows)
            q = np.histogram(cur[:, j], bins)[0] / len(cur)
            expected = population_stability_index(p, q)
            got = window["drift"]["features"][f]["psi"]
            assert abs(got - expected) < 1e-6, (day, f, got, expected)
            idx_ref = np.searchsorted(ref.edges[j], ref_rows[:, j], side="right")
            idx_cur = np.searchsorted(ref.edges[j], cur[:, j], side="right")
            assert (
                abs(window["drift"]["features"][f]["ks"] - ks_2samp(idx_ref, idx_cur).statistic)
                < 1e-12
            )
    psi_alerts = {
        (a["window"]["start"][:10], a["feature"])
        for a in rep["alerts"]
        if a["rule"] == "psi" and a["window"] != "cumulative"
    }
    # Income moved from day 1 on, and the score with it; nothing else did.
    assert {f for _, f in psi_alerts} == {"income", "(score)"}
    assert {d for d, _ in psi_alerts} == {"2026-11-24", "2026-11-25"}


def test_attribution_drift_fires_when_the_top_features_change(rep: dict[str, Any]) -> None:
    fired = [a for a in rep["alerts"] if a["rule"] == "attribution" and a["window"] != "cumulative"]
    assert [a["window"]["start"][:10] for a in fired] == ["2026-11-25"]
    assert "zip_risk" in fired[0]["evidence"]["entered"]


def test_markdown_and_html_forms(shifted: tuple[Path, Generated, Path]) -> None:
    root, _, config = shifted
    code, md = run_report(root, config, "md", gate=False)
    assert code == 0
    text = md.read_text()
    assert "# Model card" in text and "## Disparities by gender" in text and "four_fifths" in text
    code, html = run_report(root, config, "html", gate=False)
    page = html.read_text()
    assert (
        code == 0
        and page.count("<svg") >= 4
        and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    )


def test_an_unbiased_period_passes_the_gate(tmp_path: Path) -> None:
    data = generate(3000, seed=8, shift=0.0)
    write_folder(tmp_path / "events", data.events)
    write_reference(tmp_path / "reference.parquet", generate(2000, seed=99))
    write_config(tmp_path / "monitor.toml", tmp_path / "reference.parquet")
    code, out = run_report(tmp_path, tmp_path / "monitor.toml")
    rep = orjson.loads(out.read_bytes())
    assert [a for a in rep["alerts"] if a["rule"] == "four_fifths"] == []
    assert code == 0 and rep["gate"]["passed"]


def test_lines_past_the_limit_and_broken_lines_are_counted_not_read(tmp_path: Path) -> None:
    data = generate(200, seed=2)
    write_folder(tmp_path / "events", data.events)
    extra = tmp_path / "events" / "sidecar.decisions" / "99999999T999999.999999Z.jsonl"
    big = dict(data.events[1], decision_id="big/0", pad="x" * 5000)
    extra.write_bytes(orjson.dumps(big) + b"\n{not json\n[1]\n")
    write_reference(tmp_path / "r.parquet", generate(500, seed=1))
    write_config(tmp_path / "m.toml", tmp_path / "r.parquet", max_event_bytes=4096)
    code, out = run_report(tmp_path, tmp_path / "m.toml", gate=False)
    rep = orjson.loads(out.read_bytes())
    assert code == 0 and rep["traffic"]["invalid"] == 3 and rep["traffic"]["decisions"] == 200


def test_bad_config_and_missing_folder_fail_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[monitor.alerts]]\nname = "x"\nmetric = "psi"\n')
    assert (
        main(["monitor", "report", "--config", str(bad), "--events", str(tmp_path), "--out", "-"])
        == 2
    )
    assert "monitor.alerts" in capsys.readouterr().err
    assert main(["monitor", "report", "--events", str(tmp_path / "nope"), "--out", "-"]) == 2
    assert "neither a folder nor a Kafka bootstrap" in capsys.readouterr().err


def test_outcomes_from_a_file_join_their_decisions(tmp_path: Path) -> None:
    data = generate(1500, seed=12, shift=0.3)
    in_stream = [e for e in data.events if e["event_type"] != "outcome"]
    write_folder(tmp_path / "events", in_stream)
    rows = [e for e in data.events if e["event_type"] == "outcome"]
    csv = tmp_path / "outcomes.csv"
    csv.write_text(
        "decision_id,outcome,observed_at\n"
        + "".join(f"{e['decision_id']},{e['outcome']},{e['observed_at']}\n" for e in rows)
        + "unknown/0,repaid,2026-12-30T00:00:00Z\n"
    )
    write_reference(tmp_path / "r.parquet", generate(500, seed=1))
    write_config(tmp_path / "m.toml", tmp_path / "r.parquet")
    out = tmp_path / "r.json"
    argv = ["monitor", "report", "--config", str(tmp_path / "m.toml")]
    argv += ["--events", str(tmp_path / "events"), "--outcomes", str(csv), "--out", str(out)]
    assert main(argv) == 0
    rep = orjson.loads(out.read_bytes())
    assert rep["traffic"]["outcomes"] == len(rows)
    assert rep["traffic"]["waiting_outcome_ids"] == ["unknown/0"]
    with_all = tmp_path / "all"
    write_folder(with_all / "events", data.events)
    argv = ["monitor", "report", "--config", str(tmp_path / "m.toml")]
    argv += ["--events", str(with_all / "events"), "--out", str(with_all / "r.json")]
    assert main(argv) == 0
    same = orjson.loads((with_all / "r.json").read_bytes())
    assert rep["cumulative"]["attributes"] == same["cumulative"]["attributes"]


def test_a_bad_window_or_reference_fails_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "events").mkdir()
    bad = tmp_path / "w.toml"
    bad.write_text('[monitor]\nwindow = "3x"\n')
    argv = ["monitor", "report", "--events", str(tmp_path / "events"), "--out", "-"]
    assert main([*argv, "--config", str(bad)]) == 2
    assert "monitor.window" in capsys.readouterr().err
    missing = tmp_path / "r.toml"
    missing.write_text(f'[monitor]\nreference = "{tmp_path / "nope.parquet"}"\n')
    assert main([*argv, "--config", str(missing)]) == 2
    assert "config key 'monitor.reference'" in capsys.readouterr().err
    notareport = tmp_path / "x.json"
    notareport.write_text("{}")
    missing.write_text(f'[monitor]\nreference = "{notareport}"\n')
    assert main([*argv, "--config", str(missing)]) == 2
    assert "not a monitor report" in capsys.readouterr().err
