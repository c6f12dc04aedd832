"""Compile every numba kernel into numba's cache, ahead of the first start.

    python -m explainers.warmup

Compiling takes seconds (about 8 s alone, over 20 s beside a loading model on a busy
machine); reading the cache a fraction of that. The Dockerfile runs this at build time
with ``NUMBA_CACHE_DIR`` pointing where the image keeps the cache; a plain install fills
the cache on its first start instead (``cache=True``: ``__pycache__`` beside the modules, or
``NUMBA_CACHE_DIR``). The cache is specific to the CPU it was compiled for: elsewhere
numba compiles again once, into the same directory.
"""

from __future__ import annotations

import time

import numpy as np

from explainers import kernels
from explainers.ensemble import TreeEnsemble, build
from explainers.fidelity import margins
from explainers.treeshap import DIRECT_MAX_ROWS, FastPathDependent


def _tiny_ensemble() -> TreeEnsemble:
    """Two depth-2 trees, one per output: the same array types every loader builds."""
    trees = []
    for out in (0, 1):
        trees.append(
            {
                "left": [1, 3, 5, -1, -1, -1, -1],
                "right": [2, 4, 6, -1, -1, -1, -1],
                "default": [1, 3, 6, -1, -1, -1, -1],
                "feature": [0, 1, 2, -1, -1, -1, -1],
                "threshold": [0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0],
                "value": np.outer([0, 0, 0, 1.0, -1.0, 0.5, -0.5], np.eye(2)[out]),
                "cover": [8.0, 5.0, 3.0, 2.0, 3.0, 1.0, 2.0],
                "output": out,
            }
        )
    # One more tree feeding both outputs at once (tree_output -1).
    trees.append({**trees[0], "value": np.ones((7, 2)), "output": -1})
    return build(
        trees,
        n_outputs=2,
        base=[0.0, 0.0],
        n_features=3,
        transform="softmax",
        input_dtype=np.float64,
        source="warmup",
        has_cover=True,
    )


def compile_kernels() -> float:
    """Run every kernel once on a tiny model; the seconds it took."""
    t = time.perf_counter()
    ens = _tiny_ensemble()
    X = np.random.default_rng(0).normal(size=(64, 3))
    X[::7, 1] = np.nan
    margins(ens, X)
    kernels.node_counts(X, ens.left, ens.right, ens.default, ens.feature, ens.threshold, ens.roots)
    FastPathDependent.table_bytes(ens)
    # Two threads reach the parallel kernels (from parallel_min_rows rows on, and the
    # single-row split from any size of model here).
    split = FastPathDependent(ens, threads=2, parallel_min_rows=32, split_min_work=0)
    split.explain(X[:1])
    backend = FastPathDependent(ens, threads=2, parallel_min_rows=32)
    for bits in (True, False):
        backend._bits = bits
        backend.explain(X[:DIRECT_MAX_ROWS])
        backend.explain(X[:8])
        phi = backend.explain(X)
    # The explainer's per-row summaries, with one base row (margin space) or one per row.
    m = margins(ens, X)
    outs = m.argmax(axis=1)
    kernels.summarise(phi, m, ens.base.reshape(1, -1).copy(), outs, 2)
    kernels.summarise(phi, m, np.zeros_like(m), outs, 2)
    return time.perf_counter() - t


if __name__ == "__main__":
    print(f"numba kernels compiled or read from the cache in {compile_kernels():.1f} s")
