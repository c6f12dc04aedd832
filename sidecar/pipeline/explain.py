"""The background explanation stage: sampled decisions in, explanations out to the sinks.

``submit`` is a bounded, non-blocking hand-off (a full queue sheds and counts);
worker threads take up to ``batch_size`` decisions at a time and explain them in one
kernel call (the compiled kernel releases the GIL, so the event loop keeps running).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from explainers.errors import ExplainerError, InputError
from explainers.explainer import Explainer, ExplainerOptions
from explainers.explainer import build_explainer as _build
from explainers.explanation import Explanation
from explainers.served import compare_served
from sidecar.config import ExplainerSettings, Settings
from sidecar.decisions import Decision
from sidecar.metrics import Registry

log = logging.getLogger("sidecar.explain")

OnExplained = Callable[[Decision, Explanation], None]


def build_explainer(settings: Settings, registry: Registry) -> Explainer | None:
    """Load model.artifact (with model.background), check fidelity, pick the backend.

    None when no artifact is configured. Raises ExplainerError naming the setting and
    the problem; the sidecar must not start with a model it cannot explain faithfully.
    """
    m, e = settings.model, settings.explainer
    if m.artifact is None:
        return None
    started = time.perf_counter()
    # workers x threads bounds the cores taken from the proxy (threads defaults to 1).
    explainer = load_explainer(
        m.artifact,
        m.version,
        m.background,
        m.feature_names,
        e,
        threads=e.threads,
        gil_yield_rows=8,
        key="model.artifact / model.background",
    )
    if not m.version:
        # Without a configured version the artifact's content names it.
        explainer.model_version = f"sha256:{explainer.artifact_sha256[:12]}"
    log.info(
        "explainer ready: %s %s, %d trees, %s, fidelity max diff %.3g, %.2fs",
        explainer.format,
        m.artifact,
        explainer.ensemble.n_trees,
        explainer.name,
        explainer.fidelity_error or 0.0,
        time.perf_counter() - started,
    )
    registry.gauge(
        "sidecar_explainer_fidelity_max_diff",
        "Largest margin difference from the reference runtime seen at load",
    ).set(explainer.fidelity_error or 0.0)
    return explainer


def load_explainer(
    artifact: Path,
    version: str | None,
    background: Path | None,
    feature_names: list[str],
    e: ExplainerSettings,
    *,
    threads: int,
    gil_yield_rows: int,
    key: str,
) -> Explainer:
    """One model's explainer with the `[explainer]` settings (the sidecar's model and each of
    the hub's); an ExplainerError names the setting `key`."""
    options = ExplainerOptions(
        algorithm=e.algorithm,
        fidelity_rows=e.fidelity_rows,
        fidelity_tolerance=e.fidelity_tolerance,
        cache_entries=e.cache_entries,
        top_k=e.top_k,
        table_budget_bytes=e.table_budget_mb * 1024 * 1024,
        interventional_rows=e.interventional_rows,
        output_space=e.output_space,
        threads=threads,
        gil_yield_rows=gil_yield_rows,
    )
    try:
        return _build(
            artifact,
            model_version=version or "",
            background_path=background,
            feature_names=list(feature_names) or None,
            options=options,
            trusted_sha256=frozenset(e.trusted_sha256),
            xgboost_all_rounds=e.xgboost_rounds == "all",
        )
    except ExplainerError as exc:
        raise type(exc)(f"{key}: {exc}") from None


def _width_hint(decision: Decision, n_features: int) -> str:
    feats = decision.features
    if feats is not None and len(feats) != n_features:
        return " (fidelity mismatch: model.artifact is not the model the server serves)"
    return ""


def decision_row(decision: Decision, n_features: int) -> list[float]:
    """The decision's features as floats (None -> NaN); InputError when they do not fit."""
    feats = decision.features
    if feats is None:
        raise InputError("the decision has no recorded features")
    if len(feats) != n_features:
        raise InputError(
            f"the decision has {len(feats)} features but the model expects {n_features}"
        )
    return feature_floats(feats)


def feature_floats(feats: list[Any]) -> list[float]:
    """Recorded feature values as the explainer reads them (None -> NaN); InputError for a
    value that is not a number."""
    row = []
    for v in feats:
        if v is None:
            row.append(math.nan)
        elif isinstance(v, bool | int | float):
            row.append(float(v))
        else:
            raise InputError(f"feature value {v!r} is not a number")
    return row


class ExplainStage:
    """Explains sampled decisions in the background and hands them to ``on_explained``."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        explainer: Explainer,
        on_explained: OnExplained,
    ) -> None:
        cfg = settings.explainer
        self._explainer = explainer
        self._on_explained = on_explained
        self._limit = cfg.queue_size
        self._batch = cfg.batch_size
        self._n_workers = cfg.workers
        self._queue: deque[Decision] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._busy = 0
        self._threads: list[threading.Thread] = []
        self._explained = registry.counter("sidecar_explanations_total", "Decisions explained")
        self._shed = registry.counter(
            "sidecar_explanations_shed_total",
            "Sampled decisions not explained because the explanation queue was full",
        )
        self._failed: dict[str, Any] = {}
        self._registry = registry
        self._hits = registry.counter(
            "sidecar_explanation_cache_hits_total", "Explanation cache hits"
        )
        self._misses = registry.counter(
            "sidecar_explanation_cache_misses_total", "Explanation cache misses"
        )
        self._evictions = registry.counter(
            "sidecar_explanation_cache_evictions_total", "Explanations evicted from the cache"
        )
        registry.gauge(
            "sidecar_explanation_cache_entries",
            "Explanations cached",
            fn=lambda: float(len(explainer.cache)),
        )
        registry.gauge(
            "sidecar_explanation_queue_depth",
            "Sampled decisions waiting to be explained",
            fn=lambda: float(len(self._queue)),
        )
        self._batch_seconds = registry.histogram(
            "sidecar_explanation_batch_seconds", "Time to explain one batch of decisions"
        )
        self._additivity = registry.gauge(
            "sidecar_explanation_additivity_error_max",
            "Largest additivity error seen (margin space)",
        )
        self._tolerance = cfg.mismatch_tolerance
        self._ready_after = cfg.mismatch_ready_after
        self._mismatches: dict[str, Any] = {}
        self._fidelity_lock = threading.Lock()
        # Explained decisions in a row that did not match the server (a match resets it).
        self.consecutive_mismatches = 0
        self._width_warned = False

    def start(self) -> None:
        for i in range(self._n_workers):
            t = threading.Thread(target=self._run, name=f"explainer-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, decisions: list[Decision]) -> int:
        """Queue decisions without waiting; returns how many were accepted (the rest are shed)."""
        if not decisions:
            return 0
        with self._cond:
            room = 0 if self._closing else max(self._limit - len(self._queue), 0)
            accepted = decisions[:room]
            self._queue.extend(accepted)
            if accepted:
                self._cond.notify()
        shed = len(decisions) - len(accepted)
        if shed:
            self._shed.inc(shed)
        return len(accepted)

    def explain_now(self, decision: Decision) -> Explanation:
        """Explain one decision synchronously (on-demand lookup); uses and fills the cache."""
        try:
            row = decision_row(decision, self._explainer.n_features)
        except InputError as exc:
            raise InputError(f"{exc}{_width_hint(decision, self._explainer.n_features)}") from None
        explanation = self._explainer.explain([row])[0]
        self._sync_cache_counters()
        self._check_served(decision, explanation, count=False)
        return explanation

    def check_widths(self, decisions: list[Decision]) -> None:
        """Every decision, sampled or not: one whose feature count differs from the model
        artifact's cannot come from the model explained, so it is counted as a mismatch
        (and logged once) from the first call, not left to fail silently when sampled."""
        n = self._explainer.n_features
        for d in decisions:
            feats = d.features
            if feats is not None and len(feats) != n:
                self._mismatch(d.model_name)
                if not self._width_warned:
                    self._width_warned = True
                    log.error(
                        "decision %s has %d features but model.artifact has %d: the "
                        "artifact is not the model the server serves; its decisions "
                        "cannot be explained",
                        d.decision_id,
                        len(feats),
                        n,
                    )

    def ready(self) -> bool:
        """False after explainer.mismatch_ready_after mismatches in a row (0: always True)."""
        return not self._ready_after or self.consecutive_mismatches < self._ready_after

    def _mismatch(self, model: str) -> None:
        with self._fidelity_lock:
            c = self._mismatches.get(model)
            if c is None:
                c = self._registry.counter(
                    "sidecar_explanation_mismatch_total",
                    "Decisions whose explained output did not match the model server's answer "
                    "(or whose feature count differs from the model artifact's)",
                    {"model": model},
                )
                self._mismatches[model] = c
            c.inc()
            self.consecutive_mismatches += 1

    def _check_served(self, d: Decision, e: Explanation, *, count: bool = True) -> None:
        """Mark the explanation with whether the explained model answered as the server did."""
        check = compare_served(
            e.prediction,
            self._explainer.ensemble.transform,
            d.prediction,
            d.probabilities,
            self._tolerance,
        )
        e.fidelity, e.fidelity_detail = check.fidelity, check.detail
        if not count:  # an on-demand lookup: already counted if it was sampled
            return
        if check.fidelity == "mismatch":
            self._mismatch(d.model_name)
            if self.consecutive_mismatches == self._ready_after:
                log.error(
                    "%d explained decisions in a row did not match the model server (last: %s, "
                    "%s): model.artifact is not the served model",
                    self.consecutive_mismatches,
                    d.decision_id,
                    check.detail,
                )
        elif check.fidelity == "match":
            with self._fidelity_lock:
                self.consecutive_mismatches = 0

    def drain(self, timeout_s: float) -> bool:
        """Wait until every accepted decision has been explained (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, explain what is queued within the timeout, then stop the workers."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        if any(t.is_alive() for t in self._threads):
            with self._cond:
                self._abandon = True
                left = len(self._queue)
                self._queue.clear()
                self._cond.notify_all()
            self._shed.inc(left)
            for t in self._threads:
                t.join(1.0)
        self._threads.clear()

    def _fail(self, reason: str, n: int = 1) -> None:
        c = self._failed.get(reason)
        if c is None:
            c = self._registry.counter(
                "sidecar_explanations_failed_total",
                "Sampled decisions that could not be explained",
                {"reason": reason},
            )
            self._failed[reason] = c
        c.inc(n)

    def _sync_cache_counters(self) -> None:
        cache = self._explainer.cache
        self._hits.value, self._misses.value, self._evictions.value = (
            cache.hits,
            cache.misses,
            cache.evictions,
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._abandon or (self._closing and not self._queue):
                    return
                n = min(self._batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                self._busy += 1
            try:
                self._explain_batch(batch)
            except Exception:  # a stage failure must not kill the worker
                self._fail("error", len(batch))
                log.exception("explaining a batch of %d decisions failed", len(batch))
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _explain_batch(self, batch: list[Decision]) -> None:
        started = time.perf_counter()
        n_features = self._explainer.n_features
        rows, ok = [], []
        for d in batch:
            try:
                rows.append(decision_row(d, n_features))
                ok.append(d)
            except InputError:
                self._fail("features")
        if not ok:
            return
        explanations = self._explainer.explain(np.asarray(rows, dtype=np.float64))
        self._batch_seconds.observe(time.perf_counter() - started)
        self._explained.inc(len(ok))
        self._sync_cache_counters()
        worst = max(e.additivity_error for e in explanations)
        if worst > self._additivity.value:
            self._additivity.set(worst)
        for d, e in zip(ok, explanations, strict=True):
            self._check_served(d, e)
            try:
                self._on_explained(d, e)
            except Exception:
                self._fail("sink")
                log.exception("handing on the explanation of %s failed", d.decision_id)
