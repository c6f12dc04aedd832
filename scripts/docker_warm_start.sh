#!/usr/bin/env bash
# The Dockerfile's numba cache steps, run without a Docker engine, then a cold and a warm
# start timed as the image's user would make them.
#
#   scripts/docker_warm_start.sh [model file]      (as root: the start runs as uid 10001)
#
# What it does, step by step as the Dockerfile:
#   build stage   COPY the sources to src/; a fresh venv opt/venv; `pip install .` into it
#                 (--no-deps: the dependencies come from the project's .venv through a
#                 .pth, as our build machines have no package index); ENV
#                 NUMBA_CPU_NAME=generic; `cd / && NUMBA_CACHE_DIR=numba-cache python -m
#                 explainers.warmup`.
#   runtime stage COPY --chown=sidecar the cache to another folder (opt/numba-cache), the
#                 venv left to root (read-only to the sidecar user), and start as uid 10001
#                 with the runtime's NUMBA_CACHE_DIR and NUMBA_CPU_NAME.
# Each start loads the model, explains 1 and 64 rows and reports its phases and which
# kernels numba had to compile. It fails unless the warm start compiles nothing, and shows
# that a cache the user cannot write is not used at all (numba then compiles).
# Without a model file it trains a default LightGBM classifier (100 trees of 31 leaves).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=/work/main/.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

model=${1:-}
if [ -z "$model" ]; then
    model=$work/model.txt
    "$py" - "$model" <<'PY'
import sys
import lightgbm as lgb
import numpy as np
rng = np.random.default_rng(0)
X = rng.normal(size=(5000, 20))
y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
lgb.LGBMClassifier(verbose=-1, random_state=0).fit(X, y).booster_.save_model(sys.argv[1])
PY
fi
chmod 644 "$model"

echo "== build stage: COPY, venv, pip install ."
mkdir -p "$work/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/sidecar" "$root/explainers" "$work/src/"
"$py" -m venv "$work/opt/venv"
venv=$work/opt/venv
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/zz_project_deps.pth"
"$venv/bin/pip" install -q --no-deps "$work/src"
installed=$(cd / && "$venv/bin/python" -c 'import explainers; print(explainers.__file__)')
case $installed in
    "$site"/*) ;;
    *) echo "explainers imported from $installed, not the fresh venv" >&2; exit 1 ;;
esac

echo "== build stage: warm the cache (cd / && NUMBA_CACHE_DIR=... python -m explainers.warmup)"
t0=$(date +%s.%N)
(cd / && NUMBA_CPU_NAME=generic NUMBA_CACHE_DIR=$work/numba-cache "$venv/bin/python" -m explainers.warmup)
t1=$(date +%s.%N)
echo "warmup took $(echo "$t1 - $t0" | bc) s"

echo "== runtime stage: COPY --chown=sidecar the cache to opt/numba-cache"
cp -a "$work/numba-cache" "$work/opt/numba-cache"
mkdir -p "$work/home" "$work/empty-cache" "$work/root-cache"
chown -R 10001:10001 "$work/opt/numba-cache" "$work/home" "$work/empty-cache"
cp -a "$work/numba-cache/." "$work/root-cache/"   # root's, read-only to uid 10001

start() {  # cache dir, label
    local t0 t1 out
    t0=$(date +%s.%N)
    # CAP_DAC_READ_SEARCH: the interpreter may live in root's home (pyenv); it lets the
    # user read and search everywhere, while every write is still checked as uid 10001.
    out=$(cd "$work/home" && setpriv --reuid=10001 --regid=10001 --clear-groups \
        --inh-caps=+dac_read_search --ambient-caps=+dac_read_search \
        env -i PATH=/usr/bin:/bin HOME="$work/home" NUMBA_CACHE_DIR="$1" NUMBA_CPU_NAME=generic \
        "$venv/bin/python" -c "$START" "$model")
    t1=$(date +%s.%N)
    echo "$2: process $(echo "$t1 - $t0" | bc) s; $out"
    LAST=$out
}
START='
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from explainers import kernels, kernels_shap, kernels_tables
from explainers.explainer import ExplainerOptions, build_explainer
t1 = time.perf_counter()
ex = build_explainer(sys.argv[1], model_version="v", options=ExplainerOptions(cache_entries=0, threads=1))
t2 = time.perf_counter()
ex.explain(np.zeros((1, ex.n_features)))
ex.explain(np.zeros((64, ex.n_features)))
t3 = time.perf_counter()
compiled = sorted(f"{m.__name__}.{n}" for m in (kernels, kernels_shap, kernels_tables)
                  for n, f in vars(m).items()
                  if getattr(f, "stats", None) is not None and sum(f.stats.cache_misses.values()))
print(json.dumps({"import_s": round(t1 - t0, 2), "load_s": round(t2 - t1, 2),
                  "first_explain_s": round(t3 - t2, 2), "compiled": compiled}))
'

echo "== starts as uid 10001"
touch "$work/before-warm-start"
start "$work/opt/numba-cache" "warm (the image's cache)"
warm=$LAST
start "$work/root-cache" "cache not writable by the user"
readonly_=$LAST
start "$work/empty-cache" "cold (empty cache)"

case $warm in
    *'"compiled": []'*) ;;
    *) echo "FAIL: the warm start compiled kernels" >&2; exit 1 ;;
esac
case $readonly_ in
    *'"compiled": []'*) echo "FAIL: a cache the user cannot write was used?" >&2; exit 1 ;;
esac
if [ -n "$(find "$work/opt/numba-cache" -newer "$work/before-warm-start")" ]; then
    echo "FAIL: the warm start wrote to the cache" >&2
    exit 1
fi
echo "OK: the warm start read every kernel from the image's cache and wrote nothing"
