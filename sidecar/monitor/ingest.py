"""Folding events into the state: decisions, and the outcomes, reviews and explanations joined to them.

Each decision is remembered (its window, its groups, what it predicted) so that
an event about it that comes later, an outcome weeks later included, updates
the window the *decision* belongs to. An event that comes before its decision
waits for it. Events are de-duplicated: a decision by its id, an outcome by its
event id (a later outcome for the same decision replaces the earlier one), a
review's decision once, an explanation once per decision.

With several instances, each takes the decisions whose id hashes to it (and
every event about them), as Kafka's partitioning by key does.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import math
import zlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sidecar.monitor.state import (
    ALL,
    CAL0,
    CAL_BINS,
    DECIDED,
    EXPLAINED,
    FAV,
    FIX,
    FN,
    FP,
    OVERRIDDEN,
    ROUTED,
    SCORE_EDGES,
    SCORE_SUM,
    SCORED,
    SHAP0,
    TN,
    TP,
    TTD_N,
    TTD_SUM,
    Key,
    N,
    State,
    new_counts,
)

# A remembered decision: [window start, its cell's counts, predicted favourable, calibration
# bin, score, outcome (favourable?, event id, observed at) or None, review requested at,
# review decided?, explained?, decision time].
_W, _CELL, _FAV, _CAL, _SCORE, _OUT, _REQ, _DECIDED, _EXPLAINED, _TIME = range(10)
_KEY_CACHE_MAX = 65_536


def epoch(value: object) -> float | None:
    """RFC 3339 text (or Unix seconds) as Unix seconds; None when unreadable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def _number(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if v == "Infinity":
        return math.inf
    if v == "-Infinity":
        return -math.inf
    return None


def verdict(ev: dict[str, Any]) -> str | None:
    """A decided review step's verdict: its `verdict`, or, from a sidecar that predates the
    field, the prefix its reason has always carried ("override: ...", "approve: ...")."""
    v = ev.get("verdict")
    if v is None:
        reason = ev.get("reason")
        if isinstance(reason, str) and reason.startswith(("approve:", "override:")):
            v = reason.split(":", 1)[0]
    return v if v in ("approve", "override") else None


class Ingest:
    """Reads events into a `State`; one instance of `instances`."""

    def __init__(
        self,
        state: State,
        *,
        window_s: int,
        class_labels: Sequence[str] = (),
        favourable_label: str | None = None,
        attributes: Sequence[str] = (),
        intersections: Sequence[Sequence[str]] = (),
        instance: int = 0,
        instances: int = 1,
        max_tracked: int = 2_000_000,
    ) -> None:
        self.state = state
        self._window_s = window_s
        self._labels = list(class_labels)
        self._fav = favourable_label
        self._attributes = list(attributes)
        self._intersections = [list(c) for c in intersections]
        self._instance, self._instances = instance, instances
        self._max_tracked = max_tracked
        self._index: dict[str, list[Any]] = {}
        self._waiting: dict[str, list[dict[str, Any]]] = {}
        self._key_cache: dict[tuple[tuple[str, Any], ...], tuple[Key, ...]] = {}
        # Counts per (window, cell): a cell is one combination of group keys. An event updates
        # its decision's one cell, not each of its groups (overall, each attribute, each
        # intersection), and a remembered decision holds its cell, so a late outcome needs no
        # look-up; `snapshot` adds cells up into groups. (An alternating A/B on the busy
        # machine showed no difference in events/s either way: parsing dominates.)
        self._cells: dict[int, dict[tuple[Key, ...], list[float]]] = {}
        self._gap_ids: set[Any] = set()
        self._n_features = len(state.feature_names)
        self.class_labels: list[str] = list(class_labels)
        self.favourable_label = favourable_label
        self._handlers = {
            "decision": self.decision,
            "outcome": self.outcome,
            "review": self.review,
            "explanation": self.explanation,
            "gap": self.gap,
        }

    # -- dispatch -----------------------------------------------------------------------

    def feed(self, events: Iterable[dict[str, Any]]) -> None:
        handlers = self._handlers
        for ev in events:
            handler = handlers.get(ev.get("event_type"))  # type: ignore[arg-type]
            if handler is None:
                self.state.traffic["invalid"] += 1
            else:
                handler(ev)

    def _mine(self, did: str) -> bool:
        return self._instances == 1 or zlib.crc32(did.encode()) % self._instances == self._instance

    def snapshot(self) -> State:
        """The state: cells added up into groups, and the events still waiting counted."""
        for start, cells in self._cells.items():
            groups: dict[Key, list[float]] = {}
            for keys, c in cells.items():
                for key in keys:
                    g = groups.get(key)
                    if g is None:
                        groups[key] = list(c)
                    else:
                        for i, v in enumerate(c):
                            if v:
                                g[i] += v
            self.state.window(start).groups = groups
        waiting = {"outcomes": 0, "reviews": 0, "explanations": 0}
        for evs in self._waiting.values():
            for ev in evs:
                waiting[ev["event_type"] + "s"] += 1
        self.state.pending = waiting
        return self.state

    def waiting_outcomes(self, limit: int = 20) -> list[str]:
        """The `limit` smallest decision ids of outcomes still waiting for their decision.

        The smallest, not the first read: shards' lists then merge into exactly the list
        one reader of every event would give."""
        return heapq.nsmallest(
            limit,
            (
                did
                for did, evs in self._waiting.items()
                if any(e["event_type"] == "outcome" for e in evs)
            ),
        )

    # -- decisions ----------------------------------------------------------------------

    def _keys(self, attrs: object) -> tuple[Key, ...]:
        if not isinstance(attrs, dict) or not attrs:
            return (ALL,)
        cache_key = tuple(attrs.items())
        try:
            return self._key_cache[cache_key]
        except (KeyError, TypeError):
            pass
        keys: list[Key] = [ALL]
        for name in self._attributes or sorted(attrs):
            v = attrs.get(name)
            if v is not None and not isinstance(v, dict | list):
                keys.append((name, str(v)))
        for combo in self._intersections:
            values = [attrs.get(a) for a in combo]
            if all(v is not None and not isinstance(v, dict | list) for v in values):
                keys.append(("&".join(combo), "&".join(str(v) for v in values)))
        out = tuple(keys)
        if len(self._key_cache) >= _KEY_CACHE_MAX:
            self._key_cache.clear()
        with contextlib.suppress(TypeError):  # an unhashable value: not cached
            self._key_cache[cache_key] = out
        return out

    def _label(self, value: object, labels: Sequence[str]) -> str | None:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if 0 <= value < len(labels):
                return labels[value]
            return str(value)
        if isinstance(value, list) and len(value) == 1:
            return self._label(value[0], labels)
        return None

    def _judge(self, ev: dict[str, Any]) -> tuple[bool | None, float | None]:
        """(predicted the favourable label?, the favourable label's probability)."""
        labels = ev.get("class_labels") or self._labels
        fav = ev.get("favourable_label") or self._fav
        if fav is None or not isinstance(labels, list):
            return None, None
        probs = ev.get("probabilities")
        score = None
        if not isinstance(fav, str):
            return None, None
        if isinstance(probs, list) and len(probs) == len(labels) and fav in labels:
            score = _number(probs[labels.index(fav)])
        rule = ev.get("decision_rule")
        label = self._label(ev.get("prediction"), labels)
        if label is None and isinstance(probs, list) and len(probs) == len(labels) and labels:
            if isinstance(rule, dict) and rule.get("kind") == "threshold":
                target = rule.get("label")
                if isinstance(target, str) and target in labels and len(labels) == 2:
                    p = _number(probs[labels.index(target)])
                    t = _number(rule.get("threshold"))
                    if p is not None and t is not None:
                        label = target if p >= t else labels[1 - labels.index(target)]
            else:
                values = [_number(p) for p in probs]
                if all(v is not None for v in values):
                    label = labels[max(range(len(values)), key=lambda i: values[i])]  # type: ignore[arg-type,return-value]
        if label is None:
            return None, score
        return label == fav, score

    def decision(self, ev: dict[str, Any]) -> None:
        did = ev.get("decision_id")
        if not isinstance(did, str):
            self.state.traffic["invalid"] += 1
            return
        if not self._mine(did):
            return
        st = self.state
        if did in self._index:
            st.traffic["duplicates"] += 1
            return
        ts = epoch(ev.get("time"))
        if ts is None:
            st.traffic["invalid"] += 1
            return
        st.traffic["decisions"] += 1
        if st.first_time is None or ts < st.first_time:
            st.first_time = ts
        if st.last_time is None or ts > st.last_time:
            st.last_time = ts
        model = f"{ev.get('model_name')}@{ev.get('model_version')}"
        st.models[model] = st.models.get(model, 0) + 1
        if ev.get("class_labels") and not self.class_labels:
            self.class_labels = list(ev["class_labels"])
        if ev.get("favourable_label") and self.favourable_label is None:
            self.favourable_label = ev["favourable_label"]
        if not st.feature_names and not self._cells:
            # No names configured: the stream's first decision names the features (for SHAP).
            names = ev.get("feature_names")
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                st.feature_names = list(names)
                self._n_features = len(names)
        rule = ev.get("decision_rule")
        rule_kind = rule.get("kind", "?") if isinstance(rule, dict) else "argmax"
        st.decision_rules[rule_kind] = st.decision_rules.get(rule_kind, 0) + 1
        start = int(ts // self._window_s) * self._window_s
        win = st.window(start)
        fav, score = self._judge(ev)
        keys = self._keys(ev.get("group_attributes"))
        cal = -1
        if score is not None and 0.0 <= score <= 1.0:
            cal = min(int(score * CAL_BINS), CAL_BINS - 1)
            win.score_hist[bisect.bisect_right(SCORE_EDGES, score)] += 1
        c: list[float] | None = None
        if fav is None:
            st.traffic["unjudged"] += 1
        else:
            cells = self._cells.get(start)
            if cells is None:
                cells = self._cells[start] = {}
            c = cells.get(keys)
            if c is None:
                c = cells[keys] = new_counts(self._n_features)
            c[N] += 1
            if fav:
                c[FAV] += 1
            if score is not None:
                c[SCORED] += 1
                c[SCORE_SUM] += int(score * FIX)
            if ev.get("review") is not None:
                c[ROUTED] += 1
        self._histogram(ev, win.hist, win.missing)
        if len(self._index) >= self._max_tracked:
            # Oldest first (insertion order): their late events will count as unmatched.
            del self._index[next(iter(self._index))]
            st.traffic["forgotten"] += 1
        rec = [start, c, fav, cal, score, None, None, False, False, ts]
        self._index[did] = rec
        waiting = self._waiting.pop(did, None)
        if waiting:
            for later in waiting:
                self._handlers[later["event_type"]](later)

    def _histogram(self, ev: dict[str, Any], hist: list[list[int]], missing: list[int]) -> None:
        edges = self.state.edges
        if not edges:
            return
        values = ev.get("features")
        if not isinstance(values, list):
            return
        names = ev.get("feature_names")
        if names is not None and names != self.state.feature_names:
            self.state.traffic["schema_mismatch"] += 1
            return
        if len(values) != len(edges):
            self.state.traffic["schema_mismatch"] += 1
            return
        bisect_right = bisect.bisect_right
        for j, v in enumerate(values):
            if type(v) is float and v == v:  # the common case first; v != v is NaN
                e = edges[j]
                if e:
                    hist[j][bisect_right(e, v)] += 1
                continue
            x = _number(v)
            if x is None or x != x:
                missing[j] += 1
            elif edges[j]:
                hist[j][bisect_right(edges[j], x)] += 1

    # -- what joins a decision ----------------------------------------------------------

    def _joined(self, ev: dict[str, Any]) -> list[Any] | None:
        """The remembered decision the event is about; None when it waits (or is not ours)."""
        did = ev.get("decision_id")
        if not isinstance(did, str):
            self.state.traffic["invalid"] += 1
            return None
        if not self._mine(did):
            return None
        rec = self._index.get(did)
        if rec is None:
            waiting = self._waiting.setdefault(did, [])
            if len(waiting) < 16:  # one decision's worth; more is a replay loop, not news
                waiting.append(ev)
            if len(self._waiting) > self._max_tracked:
                del self._waiting[next(iter(self._waiting))]
                self.state.traffic["forgotten"] += 1
        return rec

    def outcome(self, ev: dict[str, Any]) -> None:
        rec = self._joined(ev)
        if rec is None:
            return
        label = self._label(ev.get("outcome"), self.class_labels)
        fav = self.favourable_label
        if label is None or fav is None or rec[_FAV] is None:
            self.state.traffic["invalid"] += 1
            return
        observed = epoch(ev.get("observed_at")) or 0.0
        eid = ev.get("event_id")
        old = rec[_OUT]
        if old is not None:
            if old[1] == eid:
                self.state.traffic["duplicates"] += 1
                return
            if observed < old[2]:
                self.state.traffic["outcomes_replaced"] += 1
                return
            self._count_outcome(rec, old[0], -1)
            self.state.traffic["outcomes_replaced"] += 1
        else:
            self.state.traffic["outcomes"] += 1
        truth = label == fav
        rec[_OUT] = (truth, eid, observed)
        self._count_outcome(rec, truth, 1)

    def _count_outcome(self, rec: list[Any], truth: bool, delta: int) -> None:
        pred = rec[_FAV]
        cell = (TP if truth else FP) if pred else (FN if truth else TN)
        cal = rec[_CAL]
        c = rec[_CELL]
        c[cell] += delta
        if cal >= 0:
            base = CAL0 + 3 * cal
            c[base] += delta
            c[base + 1] += delta * int(rec[_SCORE] * FIX)
            if truth:
                c[base + 2] += delta

    def review(self, ev: dict[str, Any]) -> None:
        rec = self._joined(ev)
        if rec is None:
            return
        self.state.traffic["reviews"] += 1
        action = ev.get("action")
        when = epoch(ev.get("time"))
        if action == "requested":
            if rec[_REQ] is None or (when is not None and when < rec[_REQ]):
                rec[_REQ] = when
        elif action == "decided" and not rec[_DECIDED] and rec[_FAV] is not None:
            rec[_DECIDED] = True
            start = rec[_REQ] if rec[_REQ] is not None else rec[_TIME]
            wait = max(0.0, when - start) if when is not None else None
            override = verdict(ev) == "override"
            c = rec[_CELL]
            c[DECIDED] += 1
            if override:
                c[OVERRIDDEN] += 1
            if wait is not None:
                c[TTD_SUM] += int(wait * FIX)
                c[TTD_N] += 1

    def explanation(self, ev: dict[str, Any]) -> None:
        rec = self._joined(ev)
        if rec is None:
            return
        if rec[_EXPLAINED] or rec[_FAV] is None:
            self.state.traffic["duplicates" if rec[_EXPLAINED] else "invalid"] += 1
            return
        names = ev.get("feature_names")
        contributions = ev.get("contributions")
        if names != self.state.feature_names or not isinstance(contributions, list):
            self.state.traffic["schema_mismatch"] += 1
            return
        row = 0
        labels = self.class_labels
        if len(contributions) > 1 and len(contributions) == len(labels):
            row = labels.index(self.favourable_label) if self.favourable_label in labels else 0
        values = contributions[row] if contributions else None
        if not isinstance(values, list) or len(values) != self._n_features:
            self.state.traffic["schema_mismatch"] += 1
            return
        rec[_EXPLAINED] = True
        self.state.traffic["explanations"] += 1
        c = rec[_CELL]
        c[EXPLAINED] += 1
        for j, v in enumerate(values, SHAP0):
            if type(v) is float or type(v) is int:
                c[j] += int(abs(v) * FIX)

    def gap(self, ev: dict[str, Any]) -> None:
        # Gap records belong to no decision: one instance counts them.
        if self._instance != 0:
            return
        eid = ev.get("event_id")
        if eid in self._gap_ids:  # a replayed record
            self.state.traffic["duplicates"] += 1
            return
        self._gap_ids.add(eid)
        st = self.state
        st.traffic["gap_records"] += 1
        by_kind = ev.get("by_kind")
        missing = by_kind.get("decision", 0) if isinstance(by_kind, dict) else 0
        st.traffic["gap_decisions"] += int(missing) if isinstance(missing, int) else 0
        reason = str(ev.get("reason"))
        st.gap_reasons[reason] = st.gap_reasons.get(reason, 0) + 1
