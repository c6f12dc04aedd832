"""The background stages, in the order the pipeline runs them: sample, record, review, publish, explain.

Sampling comes first so events and the lookup store record it; explaining is
queued only after "record", or a fast explanation could find no decision to
attach to in the lookup store. Review comes before publish: under
`spool.on_full = "block"` the publish stage can wait for room for long, and a
held answer's review item must exist meanwhile (its ticket must not answer
404); an explanation that arrives later is attached to the item then. Held
batches are also reviewed at once on the pipeline's held-review thread, so a
ticket is readable even while the stages wait; whichever thread takes a batch
first enqueues its items (`_take`). Each stage takes every batch of one poll.
Explanation results arrive here too, from the explainer threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sidecar.control.store import DecisionStore
from sidecar.decisions import Decision
from sidecar.pipeline.explain import ExplainStage
from sidecar.pipeline.queue import Batch, Stage
from sidecar.pipeline.sampling import Sampler
from sidecar.review.model import ReviewStore
from sidecar.sinks import EventSink
from sidecar.sinks.events import (
    NO_MODEL_FACTS,
    FeaturesPolicy,
    ModelFacts,
    decision_event,
    explanation_event,
)


class Stages:
    """What happens to a decision after its answer went back."""

    def __init__(
        self,
        *,
        store: DecisionStore,
        sink: EventSink,
        sampler: Sampler,
        review_store: ReviewStore,
        features: FeaturesPolicy,
        model: ModelFacts = NO_MODEL_FACTS,
    ) -> None:
        self.store = store
        self.sink = sink
        self.sampler = sampler
        self.review_store = review_store
        self.features = features
        self.model = model
        # Set once the explain stage exists: it is built with `explained` as its callback.
        self.explain_stage: ExplainStage | None = None
        self._claim = threading.Lock()

    def ordered(self) -> Sequence[tuple[str, Stage]]:
        return [
            ("sample", self.sample),
            ("record", self.record),
            ("review", self.review),
            ("publish", self.publish),
            ("explain", self.explain),
        ]

    def sample(self, batches: list[Batch]) -> None:
        if self.explain_stage is not None:
            for b in batches:
                self.sampler.select(b.decisions, b.explain_requested)

    def record(self, batches: list[Batch]) -> None:
        self.store.add([d for b in batches for d in b.decisions])

    def publish(self, batches: list[Batch]) -> None:
        policy, model = self.features, self.model
        self.sink.publish_many(
            "decision",
            [
                (d.decision_id, decision_event(d, policy, model))
                for b in batches
                for d in b.decisions
            ],
        )

    def explain(self, batches: list[Batch]) -> None:
        if self.explain_stage is not None:
            for b in batches:
                self.explain_stage.check_widths(b.decisions)
            chosen = [d for b in batches for d in b.decisions if d.sampled]
            if chosen:
                self.explain_stage.submit(chosen)

    def _take(self, batch: Batch) -> bool:
        """Whether this thread enqueues the batch's review items (the held lane may have)."""
        with self._claim:
            if batch.reviewed:
                return False
            batch.reviewed = True
            return True

    def review(self, batches: list[Batch]) -> None:
        for batch in batches:
            if not self._take(batch):
                continue
            held = batch.held
            for d in batch.decisions:
                if d.review is None:
                    continue
                explanation = self.store.get_explanation(d.decision_id)
                if held is not None:
                    self.review_store.enqueue(d, explanation, held.body, held.headers, held.status)
                else:
                    self.review_store.enqueue(d, explanation)

    def explained(self, decision: Decision, explanation: Any) -> None:
        """An explainer thread's result: kept for lookup, given to the review item, published."""
        body = explanation.to_dict()
        self.store.set_explanation(decision, body)
        if decision.review is not None:
            self.review_store.set_explanation(decision.decision_id, body)
        self.sink.publish("explanation", decision.decision_id, explanation_event(decision, body))
