"""The monitor as a command: one report over a period, or continuously over the stream.

Continuous mode reads new events every `monitor.interval_s` into its shards
(one per Kafka partition number it owns, or its hash share of the files sink's
folder), writes each shard's checkpoint (statistics, join index and read
position together, `sidecar.monitor.checkpoint`) to the state store, and
instance 0 merges every shard's stored state into the report
(`state_dir/report.json`), emits the alerts not emitted before to
`sidecar.alerts` and serves them as Prometheus metrics. States merge by adding
counts, so n instances report what one would, and a restarted instance goes on
from its checkpoints.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from sidecar.config import Settings
from sidecar.monitor import alerts as alert_rules
from sidecar.monitor.checkpoint import capture, restore
from sidecar.monitor.drift import Reference, load_reference
from sidecar.monitor.ingest import Ingest
from sidecar.monitor.merge import merged_report, open_store
from sidecar.monitor.report import ModelInfo, build
from sidecar.monitor.source import FolderTail
from sidecar.monitor.state import State
from sidecar.monitor.store import StaleShard
from sidecar.sinks.events import dumps
from sidecar.sinks.files import RotatingFile

log = logging.getLogger("sidecar.monitor")


def topics(settings: Settings) -> dict[str, str]:
    k = settings.kafka
    return {
        "decisions": k.topic_decisions,
        "explanations": k.topic_explanations,
        "reviews": k.topic_reviews,
        "gaps": k.topic_gaps,
        "outcomes": k.topic_outcomes,
    }


def reference(settings: Settings) -> Reference | None:
    key = "monitor.reference" if settings.monitor.reference else "model.background"
    path = settings.monitor.reference or settings.model.background
    if path is None:
        return None
    try:
        return load_reference(
            Path(path), list(settings.model.feature_names), settings.monitor.drift_bins
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"config key '{key}': cannot read the drift reference: {exc}") from None


def is_folder(source: str | Path) -> bool:
    return Path(source).is_dir()


def open_source(settings: Settings, source: str | Path, *, shard: bool) -> Any:
    """A FolderTail or a KafkaTail over the event topics; `shard`: only this instance's share."""
    m = settings.monitor
    if is_folder(source):
        return FolderTail(Path(source), topics(settings), m.max_event_bytes)
    text = str(source)
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts or not all(h.rpartition(":")[2].isdigit() for h in hosts):
        raise ValueError(f"{text} is neither a folder nor a Kafka bootstrap host:port")
    from sidecar.monitor.kafka_source import KafkaTail

    return KafkaTail(
        settings.kafka,
        text,
        topics(settings),
        instance=m.instance if shard else 0,
        instances=m.instances if shard else 1,
        max_event_bytes=m.max_event_bytes,
    )


def new_ingest(settings: Settings, ref: Reference | None, *, hash_shard: bool = True) -> Ingest:
    """`hash_shard`: take only the decisions whose id hashes to this instance (files source;
    a Kafka source is sharded by its partitions instead)."""
    m = settings.monitor
    names = list(settings.model.feature_names) or (ref.feature_names if ref else [])
    if ref is not None and ref.feature_names != names:
        raise ValueError(
            f"the drift reference's features {ref.feature_names} are not model.feature_names {names}"
        )
    state = State(feature_names=names, edges=ref.edges if ref is not None else [])
    return Ingest(
        state,
        window_s=m.window_s,
        class_labels=settings.model.class_labels,
        favourable_label=settings.model.favourable_label,
        attributes=m.attributes,
        intersections=m.intersections,
        instance=m.instance if hash_shard else 0,
        instances=m.instances if hash_shard else 1,
        max_tracked=m.max_tracked_decisions,
    )


def model_info(settings: Settings, ing: Ingest) -> ModelInfo:
    return ModelInfo(
        class_labels=ing.class_labels,
        favourable_label=ing.favourable_label,
        artifact=settings.model.artifact,
    )


def report_once(
    settings: Settings, source: str | Path, outcomes: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The report over everything in the files sink's folder or the Kafka topics (plus outcomes from a file)."""
    ref = reference(settings)
    single = settings.model_copy(
        update={"monitor": settings.monitor.model_copy(update={"instance": 0, "instances": 1})}
    )
    ing = new_ingest(single, ref)
    tail = open_source(single, source, shard=False)
    try:
        ing.feed(tail.read())
    finally:
        if hasattr(tail, "close"):
            tail.close()
    ing.feed(outcomes)
    ing.state.traffic["invalid"] += tail.invalid
    return build(
        ing.snapshot(),
        settings.monitor,
        model_info(settings, ing),
        ref,
        waiting_outcome_ids=ing.waiting_outcomes(),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FigureCollector:
    """Prometheus view of the latest report: figures per group, open alerts, traffic."""

    def __init__(self) -> None:
        self.report: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        rep = self.report
        if rep is None:
            return
        fig = GaugeMetricFamily(
            "sidecar_monitor_figure",
            "A per-group figure of the whole period (value; lower and upper interval bounds)",
            labels=["attribute", "group", "metric", "bound"],
        )
        for attr, a in rep["cumulative"]["attributes"].items():
            for g, gf in a["groups"].items():
                for name in ("selection_rate", "true_positive_rate", "false_positive_rate"):
                    f = gf[name]
                    if f["value"] is not None:
                        fig.add_metric([attr, g, name, "value"], f["value"])
                        fig.add_metric([attr, g, name, "lower"], f["interval"][0])
                        fig.add_metric([attr, g, name, "upper"], f["interval"][1])
            for name, d in a["disparities"].items():
                if name != "by_group" and d["value"] is not None:
                    fig.add_metric([attr, "*", name, "value"], d["value"])
        yield fig
        alerts = GaugeMetricFamily(
            "sidecar_monitor_alert",
            "1 for each alert the rules raise on the whole period or its latest window",
            labels=["rule", "window", "attribute", "groups", "feature"],
        )
        latest = rep["windows"][-1]["start"] if rep["windows"] else None
        for a in rep["alerts"]:
            w = a["window"] if isinstance(a["window"], str) else a["window"]["start"]
            if w in ("cumulative", latest):
                alerts.add_metric(
                    [
                        a["rule"],
                        w,
                        a.get("attribute") or "",
                        "|".join(a["groups"]),
                        a.get("feature") or "",
                    ],
                    1.0,
                )
        yield alerts
        traffic = GaugeMetricFamily(
            "sidecar_monitor_events", "Events the monitor has read, by kind", labels=["kind"]
        )
        for k in ("decisions", "outcomes", "reviews", "explanations", "invalid", "duplicates"):
            traffic.add_metric([k], rep["traffic"][k])
        yield traffic


class Continuous:
    """`sidecar monitor`: follow the stream shard by shard; checkpoint; merge; alert."""

    def __init__(self, settings: Settings, source: str | Path) -> None:
        self.settings = settings
        m = settings.monitor
        self.ref = reference(settings)
        self.folder = folder = is_folder(source)
        self.store = open_store(settings)
        self.shards: dict[str, Ingest] = {}
        self.state_dir = m.state_dir
        self.alerts_out: Any = None
        try:
            if folder:
                self.tail: Any = FolderTail(Path(source), topics(settings), m.max_event_bytes)
                key = f"files-{m.instance}-of-{m.instances}"
                self.tail.offsets = dict(self._shard(key, hash_shard=True))
            else:
                from sidecar.monitor.kafka_source import KafkaTail

                self.tail = KafkaTail(
                    settings.kafka,
                    str(source),
                    topics(settings),
                    instance=m.instance,
                    instances=m.instances,
                    max_event_bytes=m.max_event_bytes,
                    resume=lambda p: self._shard(f"kafka-p{p}", hash_shard=False),
                )
                self.tail.check_partitions()  # at start, not at the first step
        except BaseException:
            self.store.close()
            raise
        if folder:
            self.alerts_out = RotatingFile(
                Path(source) / m.topic_alerts, 64 * 1024 * 1024, 86_400.0, 48
            )
            self._emitted = self._emitted_before(Path(source) / m.topic_alerts)
        else:
            from sidecar.monitor.kafka_source import KafkaAlerts

            self.alerts_out = KafkaAlerts(settings.kafka, str(source), m.topic_alerts)
            self._emitted = set()  # consumers de-duplicate a re-emitted alert on its event id
        self.collector = FigureCollector()
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)  # type: ignore[arg-type]
        self._stop = threading.Event()
        self.report: dict[str, Any] | None = None
        self.failed: BaseException | None = None

    def _shard(self, key: str, *, hash_shard: bool) -> dict[str, int]:
        """Create shard `key`, from its checkpoint when there is one; its read position."""
        ing = new_ingest(self.settings, self.ref, hash_shard=hash_shard)
        ck = self.store.load(key)
        if ck is not None:
            restore(ing, ck)
            log.info("monitor: shard %s resumed at %s", key, ck.offsets)
        self.shards[key] = ing
        return dict(ck.offsets) if ck is not None else {}

    @staticmethod
    def _emitted_before(folder: Path) -> set[str]:
        seen: set[str] = set()
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            for line in path.read_bytes().splitlines():
                try:
                    seen.add(orjson.loads(line)["event_id"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
        return seen

    def local_state(self) -> State:
        """This instance's shards merged (what it has read)."""
        total = new_ingest(self.settings, self.ref).state
        for ing in self.shards.values():
            total.merge(ing.snapshot())
        return total

    def step(self) -> dict[str, Any] | None:
        """Read what is new, checkpoint the shards that read it; instance 0 merges, reports and alerts."""
        touched: list[str] = []
        if self.folder:
            ((key, ing),) = self.shards.items()
            before = dict(self.tail.offsets)
            ing.feed(self.tail.read())
            ing.state.traffic["invalid"] += self.tail.invalid
            self.tail.invalid = 0
            read = self.tail.offsets != before
            checkpoints = [capture(key, ing, self.tail.offsets)] if read else []
        else:
            for p, events, invalid in self.tail.read_partitions():
                key = f"kafka-p{p}"
                ing = self.shards[key]
                ing.feed(events)
                ing.state.traffic["invalid"] += invalid
                if key not in touched:
                    touched.append(key)
            checkpoints = [
                capture(key, self.shards[key], self.tail.positions(int(key[7:]))) for key in touched
            ]
        # One transaction (or one atomic file per shard): statistics and offsets together.
        self.store.save(checkpoints)
        if self.settings.monitor.instance != 0:
            return None
        rep = merged_report(self.settings, self.ref, self.store.states())
        if rep is None:
            rep = report_once_state(self.settings, self.ref)
        _write_atomic(self.state_dir / "report.json", orjson.dumps(rep))
        self._emit(rep)
        self.collector.report = self.report = rep
        return rep

    def _emit(self, rep: dict[str, Any]) -> None:
        bodies = []
        for a in rep["alerts"]:
            if a["window"] == "cumulative":
                continue  # the period's figure moves with every event; windows are what fired
            body = alert_rules.alert_event(a, rep["model"])
            if body["event_id"] not in self._emitted:
                self._emitted.add(body["event_id"])
                bodies.append(dumps(body))
        if bodies:
            self.alerts_out.write(b"\n".join(bodies) + b"\n")
            log.warning("monitor: %d new alerts", len(bodies))

    def run(self) -> None:
        port = self.settings.monitor.metrics_port
        if port is not None:
            from prometheus_client import start_http_server

            start_http_server(port, addr="127.0.0.1", registry=self.registry)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.step()
            except StaleShard as exc:
                # Another monitor owns a shard of ours: going on would count its events twice.
                log.error("monitor: %s", exc)
                self.failed = exc
                break
            except Exception:
                log.exception("monitor: a step failed; retrying next interval")
            self._stop.wait(
                max(0.0, self.settings.monitor.interval_s - (time.monotonic() - started))
            )
        self.close()

    def close(self) -> None:
        if self.alerts_out is not None:
            self.alerts_out.close()
        if hasattr(self.tail, "close"):
            self.tail.close()
        self.store.close()

    def stop(self) -> None:
        self._stop.set()


def report_once_state(settings: Settings, ref: Reference | None) -> dict[str, Any]:
    """The report of no events yet (nothing stored): the figures' empty shape."""
    ing = new_ingest(settings, ref)
    return build(ing.snapshot(), settings.monitor, model_info(settings, ing), ref)
