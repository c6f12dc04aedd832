"""TreeSHAP backends over a TreeEnsemble, all in margin space.

- ``FastPathDependent``: our compiled Fast TreeSHAP v2 kernel (kernels_tables.py,
  kernels_shap.py). Chosen when its per-leaf weight tables fit the memory budget
  (a leaf with d distinct path features needs 2^d·d weights: 6·64 at depth 6, about
  20 MB in all for a default 31-leaf LightGBM model); measured several times faster
  than XGBoost's native pred_contribs, which shap calls for XGBoost models
  (loadtests/bench_explain.py).
- ``ShapLibrary``: shap's own C kernel, fed our flat arrays through shap's documented
  dict model form. Used where one path has more than 16 distinct features or the
  tables would not fit the budget, and for interventional TreeSHAP against a background.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import numba
import numpy as np

from explainers import kernels, kernels_shap, kernels_tables
from explainers.ensemble import FloatArray, IntArray, TreeEnsemble

DEFAULT_TABLE_BUDGET_BYTES = 512 * 1024 * 1024
# Up to this many rows a call computes each leaf's weights for its rows instead of reading
# the tables: one row touches one cache line of every leaf's table, at random, and those
# misses were most of a single row's time (2x slower than computing, 300-tree depth-6
# XGBoost); from about 4 rows on, the tables, read once per block, win.
DIRECT_MAX_ROWS = 3
# Single rows are split across threads (when there are more than one) from this much
# work on: leaves plus their paths' distinct features over all trees (a default LightGBM
# model: about 19,000; a 300-tree depth-6 XGBoost: about 67,000). Below it a row takes
# tens of microseconds and waking the other threads would cost a good part of that.
SPLIT_MIN_WORK = 4096
# A leaf's table grows as 2^d·d and takes O(2^d·d^3) to fill: past 16 distinct features
# on one path, filling alone would take seconds per leaf.
MAX_PATH_FEATURES = 16


class Backend(Protocol):
    name: str

    def explain(self, X: FloatArray) -> FloatArray:
        """phi with shape (rows, outputs, features) for prepared rows."""
        ...

    @property
    def expected_value(self) -> FloatArray: ...


class FastPathDependent:
    """Exact path-dependent TreeSHAP with precomputed per-leaf weight tables."""

    name = "treeshap.path_dependent"

    def __init__(
        self,
        ens: TreeEnsemble,
        *,
        parallel_min_rows: int = 32,
        threads: int = 0,
        split_min_work: int = SPLIT_MIN_WORK,
    ) -> None:
        if not ens.has_cover:
            raise ValueError("path-dependent TreeSHAP needs node covers")
        self._ens = ens
        depth = int(kernels.tree_depth(ens.left, ens.right, ens.roots))
        n_leaves = int((ens.left < 0).sum())
        paths = kernels_tables.leaf_paths(
            ens.left, ens.right, ens.feature, ens.cover, ens.roots, n_leaves, depth
        )
        (
            self._leaf_node,
            self._leaf_tree,
            self._n_edges,
            self._edge_node,
            self._edge_left,
            self._edge_slot,
            self._n_unique,
            self._unique_feature,
            self._zero_fraction,
        ) = paths
        sizes = (1 << self._n_unique.astype(np.int64)) * self._n_unique
        self._offsets = np.zeros(n_leaves, dtype=np.int64)
        np.cumsum(sizes[:-1], out=self._offsets[1:])
        self._weights = np.empty(int(sizes.sum()))
        kernels_tables.fill_weights(
            self._n_unique, self._zero_fraction, self._offsets, self._weights
        )
        # coef[d, s] = s!(d-1-s)!/d!, the Shapley weight of a subset of size s of d - 1.
        dmax = max(int(self._n_unique.max(initial=0)), 1)
        self._coef = np.zeros((dmax + 1, dmax + 1))
        for d in range(1, dmax + 1):
            self._coef[d, 0] = 1.0 / d
            for s in range(1, d):
                self._coef[d, s] = self._coef[d, s - 1] * s / (d - s)
        self._parallel_min_rows = parallel_min_rows
        # 0: numba's pool (all cores); the sidecar passes 1 so that its worker count
        # alone bounds the cores explanations take from the proxy.
        self._threads = max(1, numba.get_num_threads() if threads <= 0 else threads)
        self._leaf_start = np.searchsorted(self._leaf_tree, np.arange(ens.n_trees + 1)).astype(
            np.int64
        )
        sizes_per_tree = np.diff(np.append(ens.roots, ens.n_nodes))
        self._max_tree_nodes = int(sizes_per_tree.max())
        self._rank, self._need_left, self._need_right = kernels_tables.path_bits(
            ens.left, ens.roots, self._leaf_start, self._n_edges, self._edge_node,
            self._edge_left, self._edge_slot, self._n_unique,
        )  # fmt: skip
        # Per leaf, the splits on its path (bits as in path_bits) whose left or right
        # branch it takes, and per slot the splits of that slot's feature: the single-row
        # kernel finds a row's unsatisfied features from these with one word per leaf.
        self._path_left = np.bitwise_or.reduce(self._need_left, axis=1)
        self._path_right = np.bitwise_or.reduce(self._need_right, axis=1)
        self._slot_nodes = self._need_left | self._need_right
        # Packed path bits need every tree to have at most 64 internal nodes.
        self._bits = bool((self._rank[ens.left >= 0] >= 0).all())
        # Each tree's splits (its internal nodes, in node order: the order of their bits)
        # as flat arrays, so a row's decisions are one pass with no leaves to skip.
        internal = np.flatnonzero(ens.left >= 0)
        self._splits = (
            np.searchsorted(internal, np.append(ens.roots, ens.n_nodes)).astype(np.int64),
            (ens.default[internal] == ens.left[internal]).astype(np.int64),
            np.ascontiguousarray(ens.feature[internal]),
            np.ascontiguousarray(ens.threshold[internal]),
        )
        # numba's default threading layer must not be entered by two threads at once.
        self._parallel_lock = threading.Lock()
        # Few rows on several threads: the trees in one chunk per thread, chunks of about
        # equal work (a leaf costs about its path's distinct features), so one row's wait
        # is shared out. Only when threads were asked for (not 0, "all cores": on a
        # machine busy with other work, waking OpenMP threads for one row cost 10x what
        # the row did on one thread) and for models big enough that a row outlasts starting
        # the threads; None keeps one thread.
        self._tree_chunks: IntArray | None = None
        work = np.add.reduceat(self._n_unique.astype(np.int64) + 1, self._leaf_start[:-1])
        if threads > 1 and self._bits and int(work.sum()) >= split_min_work:
            cum = np.cumsum(work)
            targets = cum[-1] * np.arange(1, self._threads) / self._threads
            inner = np.searchsorted(cum, targets) + 1
            self._tree_chunks = np.unique(np.concatenate(([0], inner, [ens.n_trees]))).astype(
                np.int64
            )
        root_cover = ens.cover[ens.roots[self._leaf_tree]]
        reach = ens.cover[self._leaf_node] / root_cover
        ev = ens.base.copy()
        for li in range(n_leaves):
            k = int(ens.tree_output[self._leaf_tree[li]])
            node = int(self._leaf_node[li])
            if k >= 0:
                ev[k] += reach[li] * ens.value[node, k]
            else:
                ev += reach[li] * ens.value[node]
        self._expected = ev

    @staticmethod
    def table_bytes(ens: TreeEnsemble) -> tuple[int, int]:
        """(bytes this backend's tables would take, most distinct features on one path).

        Summed leaf by leaf from the real paths: a leaf with d distinct path features needs
        2^d·d weights, plus its path's edges. Sizing every leaf from the deepest path
        instead (2^depth) overstated a default LightGBM model (31 leaves, depth 17) by four
        orders of magnitude and sent it to the slow kernel. -1 bytes: a path is too rich.
        """
        n_leaves = int((ens.left < 0).sum())
        unique = kernels_tables.path_unique_counts(
            ens.left, ens.right, ens.feature, ens.roots, n_leaves, ens.n_features
        ).astype(np.float64)
        most = int(unique.max(initial=0))
        if most > MAX_PATH_FEATURES:
            return -1, most
        depth = int(kernels.tree_depth(ens.left, ens.right, ens.roots))
        weights = float((np.exp2(unique) * unique).sum()) * 8
        # leaf_paths' per-leaf arrays, one entry per edge: node, slot and unique feature
        # (int32), direction (bool), zero fraction (float64), two bit masks (int64).
        paths = n_leaves * max(depth, 1) * (4 + 4 + 4 + 1 + 8 + 16)
        return int(weights) + paths, most

    @property
    def expected_value(self) -> FloatArray:
        return self._expected

    def explain(self, X: FloatArray) -> FloatArray:
        e = self._ens
        n = X.shape[0]
        parallel = n >= self._parallel_min_rows and self._threads > 1
        # Blocks small enough that a block's phi rows and go flags stay in L2.
        block = max(1, min(128, -(-n // self._threads) if parallel else 128))
        if self._bits and n <= DIRECT_MAX_ROWS:
            if self._tree_chunks is not None and self._parallel_lock.acquire(blocking=False):
                try:
                    split: FloatArray = kernels_shap.shap_bits_direct_split(
                        X, self._tree_chunks, *self._splits, e.value, e.tree_output,
                        self._leaf_start, self._leaf_node, self._path_left, self._path_right,
                        self._slot_nodes, self._n_unique, self._unique_feature,
                        self._zero_fraction, self._coef,
                    )  # fmt: skip
                finally:
                    self._parallel_lock.release()
                return split
            direct: FloatArray = kernels_shap.shap_bits_direct(
                X, *self._splits, e.value, e.tree_output, e.roots, self._leaf_start,
                self._leaf_node, self._path_left, self._path_right, self._slot_nodes,
                self._n_unique, self._unique_feature, self._zero_fraction, self._coef,
            )  # fmt: skip
            return direct
        if self._bits:
            args: tuple[Any, ...] = (
                X, *self._splits, e.value, e.tree_output, e.roots, self._leaf_start,
                self._leaf_node, self._need_left, self._need_right, self._n_unique,
                self._unique_feature, self._offsets, self._weights, block,
            )  # fmt: skip
            serial_fn: Callable[..., FloatArray] = kernels_shap.shap_bits_serial
            parallel_fn: Callable[..., FloatArray] = kernels_shap.shap_bits_parallel
        else:
            args = (
                X, e.left, e.default, e.feature, e.threshold, e.value, e.tree_output, e.roots,
                self._leaf_start, self._leaf_node, self._n_edges, self._edge_node,
                self._edge_left, self._edge_slot, self._n_unique, self._unique_feature,
                self._offsets, self._weights, self._max_tree_nodes, block,
            )  # fmt: skip
            serial_fn, parallel_fn = kernels_shap.shap_serial, kernels_shap.shap_parallel
        if parallel and self._parallel_lock.acquire(blocking=False):
            try:
                out: FloatArray = parallel_fn(*args)
            finally:
                self._parallel_lock.release()
            return out
        serial: FloatArray = serial_fn(*args)
        return serial


class ShapLibrary:
    """shap's C TreeSHAP kernel over our arrays (path-dependent or interventional)."""

    def __init__(self, ens: TreeEnsemble, background: FloatArray | None = None) -> None:
        import shap

        self._ens = ens
        trees = []
        for t, (start, end) in enumerate(ens.tree_ranges()):
            left = ens.left[start:end]
            leaf = left < 0

            def local(a: FloatArray | IntArray, leaf: Any = leaf, start: int = start) -> IntArray:
                out: IntArray = np.where(leaf, -1, a - start).astype(np.int32)
                return out

            values = ens.value[start:end].copy()
            k = int(ens.tree_output[t])
            if k >= 0:
                keep = np.zeros(ens.n_outputs, dtype=bool)
                keep[k] = True
                values[:, ~keep] = 0.0
            cover = ens.cover[start:end] if ens.has_cover else np.ones(end - start)
            trees.append(
                {
                    "children_left": local(left),
                    "children_right": local(ens.right[start:end]),
                    "children_default": local(ens.default[start:end]),
                    "features": np.where(leaf, -2, ens.feature[start:end]).astype(np.int32),
                    "thresholds": ens.threshold[start:end].copy(),
                    "values": values,
                    "node_sample_weight": cover.astype(np.float64),
                }
            )
        model: dict[str, Any] = {
            "trees": trees,
            "base_offset": ens.base.copy(),
            "tree_output": "raw_value",
            "input_dtype": np.float64,
            "internal_dtype": np.float64,
        }
        if background is None:
            self.name = "treeshap.path_dependent"
            self._explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        else:
            self.name = "treeshap.interventional"
            # A plain array would become a masker that keeps a random 100 rows, while
            # the base value below is the mean over all of them: the two must come from
            # the same rows or contributions do not add up (0.01 to 0.23 with 200 rows).
            masker = shap.maskers.Independent(background, max_samples=len(background))
            self._explainer = shap.TreeExplainer(
                model, data=masker, feature_perturbation="interventional"
            )
        self._expected = np.atleast_1d(np.asarray(self._explainer.expected_value, dtype=np.float64))
        if background is not None:
            # shap's own mean over the background is wrong for per-class trees in dict models.
            from explainers.fidelity import margins

            self._expected = margins(ens, background).mean(axis=0)

    @property
    def expected_value(self) -> FloatArray:
        return self._expected

    def explain(self, X: FloatArray) -> FloatArray:
        sv = np.asarray(self._explainer.shap_values(X, check_additivity=False), dtype=np.float64)
        if sv.ndim == 2:
            sv = sv[:, :, None]
        out: FloatArray = np.ascontiguousarray(np.transpose(sv, (0, 2, 1)))
        return out


def choose_backend(
    ens: TreeEnsemble,
    *,
    algorithm: str = "path_dependent",
    background: FloatArray | None = None,
    table_budget_bytes: int = DEFAULT_TABLE_BUDGET_BYTES,
    threads: int = 0,
) -> Backend:
    """Our kernel where its tables fit, shap's otherwise; interventional always via shap."""
    if algorithm == "interventional":
        if background is None:
            raise ValueError("interventional TreeSHAP needs background data")
        return ShapLibrary(ens, background)
    if algorithm != "path_dependent":
        raise ValueError(f"unknown algorithm {algorithm!r}: use path_dependent or interventional")
    size, _ = FastPathDependent.table_bytes(ens)
    if 0 <= size <= table_budget_bytes:
        return FastPathDependent(ens, threads=threads)
    return ShapLibrary(ens)
