"""The monitor: per-group fairness, error rates with outcomes, drift and alerts, from the event stream.

`state.py` keeps mergeable sufficient statistics per (event-time window, group),
`ingest.py` folds events into them (joining late outcomes, reviews and explanations
to their decision), `figures.py` turns them into metrics with intervals, `drift.py`
compares distributions, `alerts.py` applies the configured rules, `report.py` builds
the JSON contract and `render.py` / `charts.py` its Markdown, HTML and SVG forms.
"""
