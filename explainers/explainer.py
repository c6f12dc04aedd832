"""The explainer: a loaded, fidelity-checked model with a TreeSHAP backend and a cache.

Built once per model version (``build_explainer``); ``explain`` takes many rows in one
call, answers cached rows from the cache and computes the rest in one kernel call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explainers import __version__, kernels
from explainers.background import Background, covers_from, load_background
from explainers.cache import LRUCache, row_key
from explainers.ensemble import FloatArray, TreeEnsemble
from explainers.errors import ExplainerError, ModelLoadError
from explainers.explanation import Explanation, json_value
from explainers.fidelity import check_fidelity, margins, probe_rows
from explainers.loader import LoadedModel, load_model
from explainers.probability import to_probability
from explainers.treeshap import DEFAULT_TABLE_BUDGET_BYTES, Backend, choose_backend

# Largest additivity error (relative to the margin's size) the start-up probe accepts:
# exact TreeSHAP is off by rounding only (~1e-9); anything near this is a broken model.
PROBE_ADDITIVITY = 1e-4


@dataclass(frozen=True)
class ExplainerOptions:
    algorithm: str = "path_dependent"  # or "interventional"
    fidelity_rows: int = 256
    fidelity_tolerance: float = 1e-4
    cache_entries: int = 100_000
    top_k: int = 5
    table_budget_bytes: int = DEFAULT_TABLE_BUDGET_BYTES
    interventional_rows: int = 200  # background rows interventional SHAP averages over
    output_space: str = "margin"  # or "probability": a documented rescaling (probability.py)
    threads: int = 0  # kernel threads per call; 0 = all cores for batches, one for single rows
    # Release the GIL every this many rows of Python-side work (0: never), so an event
    # loop sharing the process waits microseconds, not the whole batch.
    gil_yield_rows: int = 0


class Explainer:
    """Explains rows of one model version; thread-safe."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        model_version: str,
        feature_names: list[str] | None = None,
        background: Background | None = None,
        options: ExplainerOptions | None = None,
    ) -> None:
        self.options = opts = options or ExplainerOptions()
        if opts.output_space not in ("margin", "probability"):
            raise ModelLoadError(f"output space {opts.output_space!r}: use margin or probability")
        ens = loaded.ensemble
        self.model_version = model_version
        self.background_hash = background.sha256 if background is not None else None
        if feature_names and len(feature_names) != ens.n_features:
            raise ModelLoadError(
                f"{len(feature_names)} feature names configured but the model has {ens.n_features} features"
            )
        if (
            not feature_names
            and background is not None
            and len(background.columns) == ens.n_features
        ):
            feature_names = background.columns
        self.feature_names = list(feature_names or [f"f{i}" for i in range(ens.n_features)])
        self.artifact_sha256 = loaded.sha256
        # The model's own runtime (None when its native library is missing): recourse
        # confirms what it finds on the parsed trees with it.
        self.reference = loaded.reference
        if not ens.has_cover and opts.algorithm == "path_dependent":
            if background is None:
                raise ModelLoadError(
                    f"{loaded.format} models carry no node covers: configure background data "
                    "(model.background, or --background) to compute them"
                )
            ens = covers_from(ens, background.rows)
        self.fidelity_error = self._check(loaded, ens, background)
        bg_rows = None
        if opts.algorithm == "interventional":
            if background is None:
                raise ModelLoadError(
                    "interventional TreeSHAP needs background data (model.background)"
                )
            bg_rows = background.rows[: opts.interventional_rows]
        self.ensemble = ens
        self.format = loaded.format
        self._backend: Backend = choose_backend(
            ens,
            algorithm=opts.algorithm,
            background=bg_rows,
            table_budget_bytes=opts.table_budget_bytes,
            threads=opts.threads,
        )
        self.name = self._backend.name
        self.version = f"{__version__}+{type(self._backend).__name__}"
        self._base = [float(v) for v in self._backend.expected_value]
        self._base_array = np.asarray(self._base)
        self._base_array.flags.writeable = False  # shared by every cache entry
        # As summarise takes it (a writeable copy: a read-only array is another numba type).
        self._base_rows = self._base_array.reshape(1, -1).copy()
        self._probe(loaded.format)
        # Entries as plain tuples of arrays and numbers: the garbage collector stops tracking
        # them, so a full cache (100,000 entries) adds nothing to a full collection's walk of
        # the process that forwards inference calls (as `sidecar.control.store`).
        self.cache: LRUCache[_Packed] = LRUCache(opts.cache_entries)

    def _check(self, loaded: LoadedModel, ens: TreeEnsemble, bg: Background | None) -> float | None:
        if loaded.reference is None:
            raise ModelLoadError(
                f"the {loaded.format} runtime is not installed, so the model cannot be checked "
                "for fidelity (pip install 'explaining-sidecar[native]')"
            )
        n = self.options.fidelity_rows
        parts = [probe_rows(ens, n)]
        if bg is not None:
            parts.append(bg.rows[:n])
        return check_fidelity(
            ens,
            loaded.reference,
            np.vstack(parts),
            self.options.fidelity_tolerance,
            what=f"{loaded.format} model {self.model_version}",
        )

    def _probe(self, fmt: str) -> None:
        """Explain a few rows now: a model the backend cannot explain is refused at start,
        not on every explanation while the service reports ready."""
        X = probe_rows(self.ensemble, 8, seed=1)
        try:
            phi, m = self.shap_values(X)
        except Exception as exc:  # the backend's own errors (shap raises its own types)
            raise ModelLoadError(
                f"the {fmt} model {self.model_version} cannot be explained by {self.name}: {exc}"
            ) from None
        err = np.abs(phi.sum(axis=2) + np.asarray(self._base) - m)
        if not (np.isfinite(phi).all() and np.isfinite(self._base).all()):
            raise ModelLoadError(
                f"the {fmt} model {self.model_version}: {self.name} gives non-finite contributions"
            )
        worst = float(err.max())
        if worst > PROBE_ADDITIVITY * max(1.0, float(np.abs(m).max())):
            raise ModelLoadError(
                f"the {fmt} model {self.model_version}: {self.name}'s contributions do not add "
                f"up to the model's output (off by {worst:.3g}); refusing to explain it"
            )

    @property
    def n_features(self) -> int:
        return self.ensemble.n_features

    def explain(self, rows: Any) -> list[Explanation]:
        """Explain many rows in one call; cached rows come from the cache, the rest fill it."""
        X = self.ensemble.prepare(rows)
        keys = [row_key(self.model_version, X[i]) for i in range(X.shape[0])]
        out: list[Explanation | None] = []
        todo: list[int] = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is None:
                todo.append(i)
                out.append(None)
            else:
                out.append(self._explanation(X[i], _Entry(*hit), cache_hit=True))
        if todo:
            every = self.options.gil_yield_rows
            # All rows new (what a single row mostly is): no copy of them.
            todo_rows = X if len(todo) == len(keys) else X[todo]
            for n, (i, entry) in enumerate(zip(todo, self._compute(todo_rows), strict=True)):
                if every and n % every == every - 1:
                    time.sleep(0)
                self.cache.put(keys[i], entry.packed())
                out[i] = self._explanation(X[i], entry, cache_hit=False)
        return [e for e in out if e is not None]

    def explain_one(self, row: Any) -> Explanation:
        return self.explain([row])[0]

    def shap_values(self, X: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Raw arrays for prepared rows: (phi (rows, outputs, features), margins (rows, outputs))."""
        return self._backend.explain(X), margins(self.ensemble, X)

    def _compute(self, X: FloatArray) -> list[_Entry]:
        phi, m = self.shap_values(X)
        base = self._base_array
        raw_margin = m
        predictions = self.ensemble.apply_transform(m)
        bases: FloatArray | None
        if self.options.output_space == "probability":
            phi, m, bases = to_probability(phi, m, base, self.ensemble.transform)
        else:
            bases = None  # margin space: every row's base is the model's
        n = X.shape[0]
        # The output of interest: the predicted class (the one output otherwise).
        outs = raw_margin.argmax(axis=1) if m.shape[1] > 1 else np.zeros(n, dtype=np.int64)
        k = min(self.options.top_k, X.shape[1])
        err, top = kernels.summarise(phi, m, self._base_rows if bases is None else bases, outs, k)
        every = self.options.gil_yield_rows
        # One row: its arrays are fresh and its own, so the entry keeps them as they are
        # (a row of a batch is copied, or the entry would keep the whole batch alive).
        own = n == 1
        res = []
        for r in range(n):
            if every and r % every == every - 1:
                time.sleep(0)
            res.append(
                _Entry(
                    contributions=phi[r] if own else phi[r].copy(),
                    margin=m[r] if own else m[r].copy(),
                    prediction=predictions[r] if own else predictions[r].copy(),
                    # The model's base is never written to (read-only below).
                    base=base if bases is None else bases[r].copy(),
                    additivity_error=float(err[r]),
                    out=int(outs[r]),
                    top=tuple(top[r].tolist()),
                )
            )
        return res

    def _explanation(self, row: FloatArray, e: _Entry, cache_hit: bool) -> Explanation:
        contrib = e.contributions[e.out]
        return Explanation(
            model_version=self.model_version,
            explainer=self.name,
            explainer_version=self.version,
            output_space=self.options.output_space,
            feature_names=self.feature_names,
            base_values=e.base.tolist(),
            contributions=e.contributions.tolist(),
            additivity_error=e.additivity_error,
            cache_hit=cache_hit,
            background_hash=self.background_hash,
            top=[
                {
                    "feature": self.feature_names[j],
                    "value": json_value(row[j]),
                    "contribution": float(contrib[j]),
                }
                for j in e.top
            ],
            margin=e.margin.tolist(),
            prediction=e.prediction.tolist(),
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the cache keeps per row: compact arrays (~1 KB for 20 features), not the
    Python lists of an Explanation (~3 KB); the Explanation is rebuilt on a hit."""

    contributions: FloatArray  # (outputs, features)
    margin: FloatArray
    prediction: FloatArray
    base: FloatArray
    additivity_error: float
    out: int
    top: tuple[int, ...]

    def packed(self) -> _Packed:
        """The fields as a plain tuple (what the cache keeps); `_Entry(*packed)` reads it back."""
        return (
            self.contributions,
            self.margin,
            self.prediction,
            self.base,
            self.additivity_error,
            self.out,
            self.top,
        )


_Packed = tuple[FloatArray, FloatArray, FloatArray, FloatArray, float, int, tuple[int, ...]]


def build_explainer(
    model_path: str | Path,
    *,
    model_version: str,
    background_path: str | Path | None = None,
    feature_names: list[str] | None = None,
    options: ExplainerOptions | None = None,
    trusted_sha256: frozenset[str] = frozenset(),
    xgboost_all_rounds: bool = False,
) -> Explainer:
    """Load, read the background, check fidelity, choose the backend: all errors are
    ExplainerError subclasses whose message names the file and the problem."""
    loaded = load_model(
        model_path, trusted_sha256=trusted_sha256, xgboost_all_rounds=xgboost_all_rounds
    )
    background = None
    if background_path is not None:
        background = load_background(Path(background_path), loaded.ensemble)
    try:
        return Explainer(
            loaded,
            model_version=model_version,
            feature_names=feature_names,
            background=background,
            options=options,
        )
    except ExplainerError:
        raise
    except ValueError as exc:
        raise ModelLoadError(f"{model_path}: {exc}") from None
