"""The hand-off between the hot path and the background stages."""

from __future__ import annotations

import threading

from sidecar.metrics import Registry
from sidecar.pipeline.queue import Batch, Pipeline
from tests.eventlib import make_decision


def _pipeline(poll_s: float) -> tuple[Pipeline, list[list[Batch]], threading.Event]:
    seen: list[list[Batch]] = []
    ran = threading.Event()

    def stage(batches: list[Batch]) -> None:
        seen.append(list(batches))
        ran.set()

    pipeline = Pipeline(100, Registry(), [("record", stage)], poll_s=poll_s)
    pipeline.start()
    return pipeline, seen, ran


def test_a_poll_hands_the_stages_every_batch_queued_since_the_last() -> None:
    pipeline, seen, ran = _pipeline(poll_s=30.0)
    try:
        batches = [Batch([make_decision(i)]) for i in range(3)]
        for b in batches:
            assert pipeline.submit(b)
        # Nothing wakes the stages before the poll: they have not run yet.
        assert not ran.wait(0.2)
        assert pipeline.drain(5.0)
        assert seen == [batches]
    finally:
        pipeline.close()


def test_an_urgent_batch_wakes_the_stages_before_the_poll() -> None:
    pipeline, seen, ran = _pipeline(poll_s=30.0)
    try:
        held = Batch([make_decision(1)])
        assert pipeline.submit(held, urgent=True)
        assert ran.wait(5.0)
        assert seen == [[held]]
    finally:
        pipeline.close()


def test_close_runs_what_is_queued_then_stops() -> None:
    pipeline, seen, _ = _pipeline(poll_s=30.0)
    batch = Batch([make_decision(2)])
    assert pipeline.submit(batch)
    pipeline.close(5.0)
    assert seen == [[batch]]


def test_a_full_queue_sheds_and_counts() -> None:
    registry = Registry()
    pipeline = Pipeline(1, registry, [], poll_s=30.0)
    assert pipeline.submit(Batch([make_decision(1)]))
    assert not pipeline.submit(Batch([make_decision(2), make_decision(3)]))
    assert "sidecar_decisions_shed_total 2" in registry.render()


def test_a_failing_batch_costs_only_itself() -> None:
    registry = Registry()
    done: list[str] = []

    def stage(batches: list[Batch]) -> None:
        for b in batches:
            if b.decisions[0].call_id == "poison":
                raise ValueError("bad batch")
        done.extend(b.decisions[0].call_id for b in batches)

    pipeline = Pipeline(100, registry, [("publish", stage)], poll_s=30.0)
    pipeline.start()
    try:
        for rid in ("a", "poison", "b"):
            pipeline.submit(Batch([make_decision(call_id=rid)]))
        assert pipeline.drain(5.0)
    finally:
        pipeline.close()
    assert done == ["a", "b"]
    assert 'sidecar_stage_failures_total{stage="publish"} 1' in registry.render()
