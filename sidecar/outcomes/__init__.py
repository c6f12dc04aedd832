"""Outcomes: the ground truth for decisions, learned later and joined on the decision id.

`rules.py` checks one outcome (its decision id, its value against
`model.class_labels`, its RFC 3339 `observed_at`) and keeps a batch free of
duplicates; `known.py` tells whether the lookup store still has the decision;
`api.py` is `POST /outcomes` on the control plane; `load.py` reads CSV, JSON
Lines and Parquet files for `sidecar outcomes load`. Either way each outcome
becomes one event on `kafka.topic_outcomes` (`sidecar.outcomes`), whose
`event_id` depends on the decision id alone, so posting or loading again is
idempotent.
"""
