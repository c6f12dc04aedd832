"""explainers.warmup compiles every kernel a start needs: a start after it compiles none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.explain.explain_models import Trained, write_parquet

_START = """
import json, sys
import numpy as np
from explainers import kernels, kernels_shap, kernels_tables
from explainers.explainer import ExplainerOptions, build_explainer
for path, bg in json.loads(sys.argv[1]):
    for threads in (1, 0):
        ex = build_explainer(path, model_version="v", background_path=bg,
                             options=ExplainerOptions(cache_entries=0, threads=threads))
        for n in (1, 3, 8, 64):
            ex.explain(np.zeros((n, ex.n_features)))
compiled = {}
for mod in (kernels, kernels_shap, kernels_tables):
    for name, fn in vars(mod).items():
        stats = getattr(fn, "stats", None)
        if stats is not None and sum(stats.cache_misses.values()):
            compiled[f"{mod.__name__}.{name}"] = [str(s) for s in stats.cache_misses]
print(json.dumps(compiled))
"""


def test_a_start_after_warmup_compiles_nothing(
    xgb_models: dict[str, Trained], lgb_models: dict[str, Trained], tmp_path: Path
) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-m", "explainers.warmup"], env=env, check=True, timeout=300)
    bg = write_parquet(tmp_path / "bg.parquet", lgb_models["binary"].X)
    models = [
        [str(xgb_models["multiclass"].path), None],
        [str(lgb_models["binary"].path), None],
        [str(lgb_models["binary"].onnx_path), str(bg)],
    ]
    out = subprocess.run(
        [sys.executable, "-c", _START, json.dumps(models)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
