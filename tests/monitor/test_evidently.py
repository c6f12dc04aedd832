"""PSI under `monitor.psi_convention = "evidently"` equals Evidently's own on the same bins."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sidecar.config import load_settings
from sidecar.monitor.drift import load_reference, psi
from sidecar.monitor.runner import report_once
from tests.monitor.evidently_env import evidently_psi
from tests.monitor.gen import FEATURES, generate
from tests.monitor.test_report import write_config, write_folder, write_reference


def test_psi_equals_evidentlys_on_the_same_bins(tmp_path: Path) -> None:
    data = generate(3000, seed=5, shift=0.3, feature_shift_day=1)
    reference = generate(2000, seed=99)
    write_folder(tmp_path / "events", data.events)
    write_reference(tmp_path / "reference.parquet", reference)
    write_config(tmp_path / "m.toml", tmp_path / "reference.parquet", psi_convention="evidently")
    rep = report_once(load_settings(tmp_path / "m.toml"), tmp_path / "events")
    assert "Evidently" in rep["method"]["psi"]
    ref = load_reference(tmp_path / "reference.parquet", FEATURES, 10)
    pairs, ours, popmon = [], [], []
    for day, window in enumerate(rep["windows"]):
        # A small current sample too, so that some bins are empty on one side.
        for cur in (data.features[data.day == day], data.features[data.day == day][:12]):
            for j, f in enumerate(FEATURES):
                r = np.searchsorted(ref.edges[j], reference.features[:, j], side="right")
                c = np.searchsorted(ref.edges[j], cur[:, j], side="right")
                pairs.append((r.tolist(), c.tolist()))
                hist_r = np.bincount(r, minlength=len(ref.edges[j]) + 1).tolist()
                hist_c = np.bincount(c, minlength=len(ref.edges[j]) + 1).tolist()
                ours.append(psi(hist_r, hist_c, "evidently"))
                popmon.append(psi(hist_r, hist_c, "popmon"))
                if len(cur) > 12:
                    # The report's own figure is this window's.
                    assert window["drift"]["features"][f]["psi"] == ours[-1]
    theirs = evidently_psi(pairs)
    worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True) if a is not None)
    assert worst < 1e-6, worst
    # The conventions really differ where a bin is empty: the comparison tells them apart.
    assert max(abs(a - b) for a, b in zip(popmon, theirs, strict=True) if a is not None) > 1e-3
