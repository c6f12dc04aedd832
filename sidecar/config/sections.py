"""The sections of the settings tree, one model per `[section]` of the TOML file.

Every field has a default and a docstring: the README's configuration table is
generated from them and kept in step by a test. Unknown keys are refused.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from sidecar.config.secrets import mask_token, masked_extra


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ProxySettings(_Section):
    host: str = "127.0.0.1"
    """Data plane listen address."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Data plane listen port (0 picks a free one)."""
    upstream: str = "http://127.0.0.1:9000"
    """The model server every request is forwarded to (scheme://host:port)."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Time allowed to open a connection to the upstream; past it the client gets 502."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Time allowed for the upstream to answer; past it the client gets 504."""
    max_inference_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Inference calls are buffered up to this size so they can be parsed; larger ones get 413."""
    pool_size: int = Field(default=256, ge=1)
    """Pooled keep-alive connections to the upstream."""
    idle_timeout_s: float = Field(default=75.0, gt=0)
    """Keep-alive connections from clients idle this long are closed (checked every quarter of it). On gRPC: a connection with no call open this long gets GOAWAY(NO_ERROR) and is closed; clients reconnect for their next call."""
    header_timeout_s: float = Field(default=20.0, gt=0)
    """A request head (line and headers) not complete this long after it is awaited gets 408 and the connection closes; a connection that sent no byte at all is closed without an answer. On gRPC: a connection whose client preface (and its SETTINGS) is not complete this long after it opened is closed (GOAWAY PROTOCOL_ERROR); no upstream connection is opened before the preface."""
    body_timeout_s: float = Field(default=20.0, gt=0)
    """A request body with no bytes for this long (while the sidecar reads it) gets 408 and the connection closes."""
    max_target_bytes: int = Field(default=8 * 1024, ge=256)
    """Longest request target (path and query) taken; longer ones get 414 and the connection closes."""
    max_header_bytes: int = Field(default=60 * 1024, ge=1024)
    """Largest request header section (names and values) taken; larger ones get 431 and the connection closes. On gRPC: a header block past it ends the connection (GOAWAY), a decoded header list past it the call (RESOURCE_EXHAUSTED)."""
    max_headers: int = Field(default=100, ge=8)
    """Most request header lines taken; more get 431 and the connection closes."""
    max_connections: int = Field(default=1024, ge=1)
    """Open client connections to the data plane; one past it is answered 503 and closed."""
    max_stream_connections: int = Field(default=256, ge=1)
    """Upstream connections that pass-through (streamed) calls may hold at once; past it they get 503, so inference calls always find the upstream."""
    max_rows_per_request: int = Field(default=10_000, ge=1)
    """Rows beyond this in one call are forwarded but not recorded as decisions (counted)."""
    upstream_ca_file: Path | None = None
    """PEM bundle of the CAs that sign an https:// upstream's certificate (default: the system's)."""
    grpc_listen: str | None = None
    """gRPC listen address `host:port` (port 0 picks a free one); unset: no gRPC listener."""
    grpc_upstream: str | None = None
    """The gRPC model server every RPC is forwarded to: http://host:port (plaintext HTTP/2) or https://host:port (TLS, verified as the HTTP upstream is, against upstream_ca_file if set). Required with grpc_listen."""
    grpc_decision_id_in_parameters: bool = False
    """Also put the decision id in ModelInfer answers' `parameters["x-decision-id"]` (re-serialises the answer); off: the message is the model server's, byte for byte, and the id is in the initial metadata only."""
    grpc_max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=2**31 - 1)
    """Largest gRPC message taken from a client or from the upstream, either way; larger ones end the call with RESOURCE_EXHAUSTED."""
    grpc_max_concurrent_rpcs: int = Field(default=1024, ge=1)
    """gRPC calls served at once; one past it is answered RESOURCE_EXHAUSTED."""
    grpc_max_connections: int = Field(default=256, ge=1)
    """Open gRPC client connections (each holds one upstream connection); one past it is answered UNAVAILABLE naming this key and closed, without an upstream connection. Apart from proxy.max_connections (HTTP)."""
    workers: int = Field(default=1, ge=1, le=64)
    """Data-plane processes, each with its own listening socket on `port` (SO_REUSEPORT: the kernel spreads connections over them), event loop, upstream pool, decision queue, explainer and sink (its spool and files under `worker-K/`); one control process serves them all. With grpc_listen, each worker has its own gRPC listening socket on that port too."""

    @field_validator("upstream_ca_file")
    @classmethod
    def _check_ca_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            try:
                ssl.create_default_context(cafile=str(v))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load CA certificates from {v}: {exc}") from None
        return v

    @field_validator("grpc_listen")
    @classmethod
    def _check_grpc_listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8090 ([::1]:8090 for IPv6)")
        return v

    @field_validator("grpc_upstream")
    @classmethod
    def _check_grpc_upstream(cls, v: str | None) -> str | None:
        return None if v is None else cls._check_upstream(v)

    @model_validator(mode="after")
    def _check_grpc(self) -> ProxySettings:
        if self.grpc_listen is not None and self.grpc_upstream is None:
            raise ValueError("proxy.grpc_upstream is required when proxy.grpc_listen is set")
        return self

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000"
            )
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("must be scheme://host[:port] only; paths are taken from each request")
        return v.rstrip("/")


class ControlSettings(_Section):
    host: str = "127.0.0.1"
    """Control plane listen address."""
    port: int = Field(default=8081, ge=0, le=65535)
    """Control plane listen port (0 picks a free one)."""
    open_health: bool = True
    """Serve /healthz and /readyz without a token."""
    open_metrics: bool = True
    """Serve /metrics without a token."""
    nice: int = Field(default=19, ge=0, le=19)
    """Scheduling niceness of the control plane's process (every thread of it), from the moment it serves: the data plane's process preempts it on a shared core."""
    sched_idle: bool = True
    """Also run the control plane's process (every thread of it) under Linux's SCHED_IDLE policy from the moment it serves: a data-plane thread that wakes on its core takes the core at once, where a niced thread first runs out its slice (about a millisecond). Under it the control plane gets a core only when the data plane leaves one idle: false keeps niceness alone, for a pod whose data plane keeps every core busy."""
    gil_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)
    """How long a thread of the data plane's process may hold the interpreter before a waiting one gets it (Python's default is 5 ms): bounds how long the background stages and the control bridge's thread can hold up the hot path."""


class ModelSettings(_Section):
    name: str | None = None
    """Model name for MLflow calls (their path carries none); others take it from the path."""
    version: str | None = None
    """Model version recorded on decisions when the call names none."""
    feature_names: list[str] = []
    """Feature names in the model's input order; without them features are named f0, f1, ..."""
    class_labels: list[str] = []
    """Labels of the classifier's classes, in probability order."""
    favourable_label: str | None = None
    """The class label that is the favourable outcome for the person (e.g. `repaid`); fairness metrics, reasons and recourse are taken relative to it. Must be one of `class_labels`."""
    decision_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """How the model server turns scores into predictions, told to consumers in every decision event's `decision_rule`: unset, the most probable class (`argmax`); set, `decision_threshold_label` when its probability is at least this (`threshold`). Needs `class_labels`."""
    decision_threshold_label: str | None = None
    """The class whose probability `decision_threshold` applies to (default: the last of `class_labels`, the positive class of a binary model). Must be one of `class_labels`."""
    artifact: Path | None = None
    """The model file the server serves (ONNX, XGBoost JSON/UBJ, LightGBM text); enables explanations."""
    background: Path | None = None
    """Background data (Parquet or CSV) for node covers and interventional SHAP."""

    @model_validator(mode="after")
    def _check_favourable(self) -> ModelSettings:
        if self.favourable_label is not None and self.favourable_label not in self.class_labels:
            raise ValueError(
                f"favourable_label {self.favourable_label!r} is not one of class_labels {self.class_labels}"
            )
        if self.decision_threshold is not None and not self.class_labels:
            raise ValueError("decision_threshold needs class_labels (the class it applies to)")
        label = self.decision_threshold_label
        if label is not None and label not in self.class_labels:
            raise ValueError(
                f"decision_threshold_label {label!r} is not one of class_labels {self.class_labels}"
            )
        return self


class DecisionSettings(_Section):
    queue_size: int = Field(default=10_000, ge=1)
    """Bound of the queue between the hot path and the background stages; past it decisions are shed and counted."""
    retention: int = Field(default=100_000, ge=1)
    """Decisions kept for lookup by id (oldest forgotten first)."""
    retention_bytes: int = Field(default=128 * 1024 * 1024, ge=1024 * 1024)
    """Bytes the lookup store may hold: decisions, their explanations and the request-id index, as counted by the store (oldest call forgotten first)."""
    flush_interval_ms: float = Field(default=25.0, gt=0, le=1000)
    """How often the background stages take what the hot path queued: decisions reach lookups, events and the spool within this (held ones at once). Longer costs less CPU per request but widens what a crash can lose."""
    on_overload: Literal["shed", "reject"] = "shed"
    """When the sidecar cannot record (decision queue full, spool full or failing): shed answers and accounts for the loss in a gap record; reject answers 503 with Retry-After before forwarding, so no decision is made unrecorded."""


class SamplingSettings(_Section):
    """Which decisions get explained (owned by the explanation stage)."""

    rate: float = Field(0.1, ge=0.0, le=1.0)
    """Fraction of decisions explained, chosen by a hash of the client's request id and the row (a replay chooses the same), or of the decision id when the client sent none."""
    low_confidence_below: float | None = Field(0.6, ge=0.0, le=1.0)
    """Always explain decisions whose confidence is below this (unset: no such rule)."""
    header: str = "x-explain"
    """Request header whose value 1/true/yes/on asks for an explanation of every row of the call."""
    group_rates: dict[str, float] = {}
    """Per group attribute rates, e.g. {"gender=F" = 0.5}; the highest matching rate applies."""

    @field_validator("group_rates")
    @classmethod
    def _check_group_rates(cls, v: dict[str, float]) -> dict[str, float]:
        for key, rate in v.items():
            name, sep, value = key.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ValueError(f"key {key!r} must look like attribute=value")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate for {key!r} must be between 0 and 1")
        return v


class ExplainerSettings(_Section):
    """The background TreeSHAP stage."""

    workers: int = Field(1, ge=1, le=64)
    """Threads explaining batches off the event loop (the kernel releases the GIL)."""
    batch_size: int = Field(64, ge=1, le=100_000)
    """Most decisions explained in one kernel call."""
    queue_size: int = Field(10_000, ge=1)
    """Decisions waiting to be explained; past it they are shed and counted."""
    cache_entries: int = Field(100_000, ge=0)
    """Explanations kept in the LRU cache keyed by (model version, feature-vector hash); 0 disables it."""
    algorithm: Literal["path_dependent", "interventional"] = "path_dependent"
    """Exact path-dependent TreeSHAP (node covers) or interventional against the background data."""
    fidelity_tolerance: float = Field(1e-4, gt=0)
    """Largest margin difference (relative above 1) from the reference runtime accepted at load."""
    fidelity_rows: int = Field(256, ge=1)
    """Probe rows (and background rows) compared with the reference runtime at load."""
    top_k: int = Field(5, ge=0)
    """Largest contributions listed per explanation for people (full vectors are always kept)."""
    interventional_rows: int = Field(200, ge=1)
    """Background rows interventional TreeSHAP averages over (cost grows linearly)."""
    table_budget_mb: int = Field(512, ge=1)
    """Memory for the fast kernel's per-leaf weight tables; deeper models use shap's kernel."""
    trusted_sha256: list[str] = []
    """SHA-256 digests of scikit-learn pickle/joblib artifacts you trust; others are never unpickled."""
    output_space: Literal["margin", "probability"] = "margin"
    """margin: exact TreeSHAP of the raw score; probability: contributions rescaled to sum to p - p(base)."""
    xgboost_rounds: Literal["best", "all"] = "best"
    """An XGBoost model saved by early stopping: best explains the rounds up to best_iteration, as XGBoost's scikit-learn interface (MLServer) predicts; all explains every tree, as a bare Booster.predict (KServe's xgbserver) does."""
    mismatch_tolerance: float = Field(1e-3, gt=0)
    """Largest difference (relative above 1) between the explained model's output and the server's answer for the same row; past it the explanation is marked fidelity "mismatch"."""
    mismatch_ready_after: int = Field(20, ge=0)
    """/readyz reports "explainer" not ready after this many explained decisions in a row did not match the server (a match resets it); 0: never."""
    threads: int = Field(1, ge=1, le=64)
    """Cores one explanation call may use: above 1, a single row's trees (and batches of 32 rows or more) are split across that many threads. Each worker may then take that many cores at once, so keep workers x threads within the cores the proxy does not need; 1 never competes with it."""


class GroupSettings(_Section):
    """Group (protected) attributes: where they come from and the privacy policy."""

    class Derive(_Section):
        feature: str = Field(min_length=1)
        """The feature (by name) the attribute is derived from."""
        bins: list[float] = []
        """Ascending edges: value v gets label i when bins[i] <= v < bins[i+1] (the last is open)."""
        labels: list[str] = []
        """One label per bin edge; default "lo-hi" ("65+" for the last); values below bins[0] get "<lo"."""
        map: dict[str, str] = {}
        """Categorical values (as text) -> label; unmapped values are kept as they are."""

        @field_validator("bins")
        @classmethod
        def _check_bins(cls, v: list[float]) -> list[float]:
            if any(v[i] >= v[i + 1] for i in range(len(v) - 1)):
                raise ValueError("bins must be strictly ascending")
            return v

    header: str = "x-group-attributes"
    """Request header carrying attributes as `name=value; name=value` (stripped before forwarding)."""
    body_field: str = "group_attributes"
    """V2 request `parameters` field holding the attributes (an object, or the header's format); removed before forwarding. Empty turns it off."""
    derive: dict[str, Derive] = {}
    """Attribute name -> {feature, bins, labels, map}: attributes derived from the row's features (e.g. age bands)."""
    allowed: list[str] = []
    """Attribute names accepted from requests (empty: any name); others are ignored and counted."""
    max_attributes: int = Field(default=16, ge=1, le=256)
    """Attributes kept per request; extra ones are ignored and counted."""
    max_value_chars: int = Field(default=128, ge=1, le=4096)
    """Longest attribute value kept; longer ones are ignored and counted."""
    privacy: dict[str, Literal["keep", "hash", "drop"]] = {}
    """Attribute name -> keep | hash (keyed HMAC-SHA256) | drop, applied before anything leaves the process."""
    default_privacy: Literal["keep", "hash", "drop"] = "keep"
    """Policy for attributes that `privacy` does not name."""
    hash_key: SecretStr | None = None
    """Key for the `hash` policy (required when any attribute is hashed); keep it secret and stable."""

    @field_validator("header")
    @classmethod
    def _check_group_header(cls, v: str) -> str:
        return _header_name(v)

    @model_validator(mode="after")
    def _check_hash_key(self) -> GroupSettings:
        hashed = self.default_privacy == "hash" or "hash" in self.privacy.values()
        if hashed and (self.hash_key is None or not self.hash_key.get_secret_value()):
            raise ValueError("groups.hash_key is required when an attribute's privacy is 'hash'")
        for name, rule in self.derive.items():
            if rule.labels and len(rule.labels) != len(rule.bins):
                raise ValueError(f"derive.{name}: labels needs one entry per bin edge")
        return self


class SinkSettings(_Section):
    """Where events go: local files (default) or Kafka."""

    kind: Literal["files", "kafka", "none"] = "files"
    """files: rotated JSON Lines files under `directory`; kafka: the spool and the Kafka producer; none: discard (counted)."""
    directory: Path = Path("var/events")
    """Where the files sink writes, one subdirectory per topic."""
    rotate_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    """The files sink starts a new file past this size."""
    rotate_interval_s: float = Field(default=3600.0, gt=0)
    """The files sink starts a new file after this long."""
    keep_files: int = Field(default=48, ge=1)
    """Files kept per topic by the files sink (the oldest are deleted)."""
    features: Literal["full", "hash"] = "full"
    """Decision events carry the feature values (full) or only their SHA-256 (hash)."""


class KafkaSettings(_Section):
    """The Kafka producer (used when sink.kind = "kafka")."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of the cluster's brokers."""
    topic_decisions: str = "sidecar.decisions"
    """Topic of decision events."""
    topic_explanations: str = "sidecar.explanations"
    """Topic of explanation events."""
    topic_reviews: str = "sidecar.reviews"
    """Topic of review events."""
    topic_gaps: str = "sidecar.gaps"
    """Topic of gap records: what was shed or dropped, why, how many, of which kinds, when, which decision ids."""
    topic_outcomes: str = "sidecar.outcomes"
    """Topic of outcome events: the ground truth for decisions (POST /outcomes, `sidecar outcomes load`)."""
    topic_alerts: str = "sidecar.alerts"
    """Topic of alert events: a monitor rule fired (written by `sidecar monitor`)."""
    client_id: str = "explaining-sidecar"
    """Client id the brokers see (quotas, logs)."""
    source: str = "/explaining-sidecar"
    """CloudEvents `ce_source` (a URI reference naming this producer)."""
    enable_idempotence: bool = True
    """Idempotent producer: broker-side de-duplication of retries, order kept (acks is always all)."""
    linger_ms: int = Field(default=50, ge=0, le=60_000)
    """How long the producer waits to fill a batch (50 ms: a third less sidecar CPU at 500 events/s than 5 ms)."""
    batch_size: int = Field(default=256 * 1024, ge=1024)
    """Largest batch per partition, in bytes."""
    compression_type: Literal["none", "gzip", "lz4", "snappy", "zstd"] = "none"
    """Batch compression (lz4, snappy and zstd need their Python package installed)."""
    max_in_flight_events: int = Field(default=20_000, ge=1)
    """Events handed to the producer and not yet acknowledged; the spool holds the rest."""
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    """How long the producer waits for a broker's answer."""
    delivery_timeout_ms: int = Field(default=120_000, ge=1000)
    """How long a record may wait for acknowledgement before it is failed (and replayed from the spool)."""
    retry_backoff_ms: int = Field(default=200, ge=1)
    """Pause before the spool replays after a producer error."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to talk to the brokers."""
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = None
    """SASL mechanism for the SASL_* protocols."""
    sasl_username: str | None = None
    """SASL user (PLAIN, SCRAM)."""
    sasl_password: SecretStr | None = None
    """SASL password (PLAIN, SCRAM); prefer SIDECAR_KAFKA__SASL_PASSWORD over the file."""
    ssl_cafile: Path | None = None
    """CA bundle that signs the brokers' certificates."""
    ssl_certfile: Path | None = None
    """Client certificate (mutual TLS)."""
    ssl_keyfile: Path | None = None
    """Client private key (mutual TLS)."""
    ssl_password: SecretStr | None = None
    """Password of the client private key."""
    ssl_check_hostname: bool = True
    """Check that the broker's certificate names the host."""
    extra: dict[str, str | int | float | bool] = {}
    """Further kafka-python KafkaProducer options, passed through (unknown names are refused at start)."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (masked_extra(value) if name == "extra" else value)

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError("kafka.sasl_mechanism is required with a SASL_* security_protocol")
        if not [s for s in self.bootstrap_servers.split(",") if s.strip()]:
            raise ValueError("kafka.bootstrap_servers must name at least one host:port")
        return self


class SpoolSettings(_Section):
    """The on-disk spool in front of Kafka."""

    directory: Path = Path("var/spool")
    """Where the spool's segment files and acknowledgement checkpoint live."""
    max_bytes: int = Field(default=1024 * 1024 * 1024, ge=64 * 1024)
    """Bound of the spool on disk; at it `on_full` applies."""
    segment_bytes: int = Field(default=64 * 1024 * 1024, ge=16 * 1024)
    """Segment file size; a segment is deleted once all its events are acknowledged (capped at max_bytes/4)."""
    on_full: Literal["drop_newest", "block"] = "drop_newest"
    """drop_newest: refuse new events (counted; a gap record follows); block: the publishing background stage waits."""
    fsync: Literal["never", "interval", "always"] = "interval"
    """never: the OS writes back; interval: a background fsync every fsync_interval_ms; always: each append (slow)."""
    fsync_interval_ms: int = Field(default=200, ge=1)
    """Period of the background fsync under fsync = "interval"."""


class ReviewSettings(_Section):
    """Routing rules and the review store."""

    enabled: bool = True
    """Route decisions to human review at all."""
    mode: Literal["flag", "hold"] = "flag"
    """flag: the model's answer goes back with `x-review-status: queued`; hold: the client gets 202 and a ticket."""
    confidence_below: float | None = Field(default=0.6, ge=0, le=1)
    """Decisions with confidence below this go to review (null turns the rule off)."""
    band: tuple[float, float] | None = None
    """[lo, hi]: decisions whose score (positive-class probability) lies inside go to review."""
    group_rules: dict[str, bool | float] = {}
    """"attr=value" -> true (always review) or a rate in [0, 1] (deterministic sample by decision id)."""
    header: str = "x-review"
    """Request header whose value 1/true/yes/on asks for review of every row of the call."""
    audit_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of decisions no other rule routed that go to review as a random audit sample."""
    db_path: Path = Path("var/review.db")
    """SQLite file (WAL mode) holding the queue and the audit chain."""
    lease_seconds: float = Field(default=300.0, gt=0, le=86_400)
    """How long a claim lasts before the item goes back to pending."""
    max_page_size: int = Field(default=100, ge=1, le=1000)
    """Largest page the review API returns."""
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request body the review API accepts (413 past it)."""
    max_reason_chars: int = Field(default=2000, ge=1)
    """Longest reason a reviewer may give."""
    explanation_cache_size: int = Field(default=10_000, ge=0)
    """On-demand explanations kept for decision lookups (least recently used dropped first)."""
    store: Literal["local", "hub"] = "local"
    """local: the queue and audit chain in `db_path` (SQLite); hub: routed decisions are sent as review-requested events to the fleet hub's one queue (needs sink.kind = "kafka"), nothing is written locally."""
    hub_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    """The fleet hub's URL as people and clients reach it (http(s)://host[:port], e.g. https://hub.example.com). With store = "hub": a contest filed on this sidecar is refused (409) naming where to file it at the hub, and in mode = "hold" (where it is required) a held client's status_url points there."""
    held_max_bytes: int = Field(default=256 * 1024, ge=0, le=4 * 1024 * 1024)
    """With store = "hub" and mode = "hold": held answers up to this size travel to the hub in the review-requested event (base64); a larger one does not, and the hub shows the verdict only, saying why."""

    @model_validator(mode="after")
    def _check_store(self) -> ReviewSettings:
        if self.store == "hub" and self.mode == "hold" and self.hub_url is None:
            raise ValueError(
                "review.mode = hold with review.store = hub needs review.hub_url (the hub's"
                " public URL, where a held client's status_url points)"
            )
        return self

    @field_validator("band")
    @classmethod
    def _check_band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError("must be [lo, hi] with 0 <= lo <= hi <= 1")
        return v

    @field_validator("group_rules")
    @classmethod
    def _check_group_rules(cls, v: dict[str, bool | float]) -> dict[str, bool | float]:
        for key, rule in v.items():
            attr, sep, value = key.partition("=")
            if not sep or not attr.strip() or not value.strip():
                raise ValueError(f"rule key {key!r} must be 'attribute=value'")
            if not isinstance(rule, bool) and not 0.0 <= rule <= 1.0:
                raise ValueError(f"rule {key!r}: rate must be true, false or in [0, 1]")
        return v

    @field_validator("header")
    @classmethod
    def _check_header(cls, v: str) -> str:
        return _header_name(v)


class OutcomeSettings(_Section):
    """Ground truth for decisions: POST /outcomes and `sidecar outcomes load`."""

    max_batch_items: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most outcomes in one POST /outcomes body; more get 413 (nothing of it is emitted)."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest POST /outcomes body accepted; larger ones get 413."""


class ReasonSettings(_Section):
    """The principal reasons given to the person an unfavourable decision is about."""

    count: int = Field(default=3, ge=1, le=20)
    """How many principal reasons an unfavourable decision is given, largest first."""
    catalogue: Path | None = None
    """A TOML reason catalogue (`language`, `[features.NAME]` with `up`, `down`, `label`; `[notice]` texts); without one a reason's text is its feature name, and says so."""
    exclude: list[str] = []
    """Features never given as reasons (proxies of group attributes); features a group attribute is derived from (`groups.derive`) are never given either."""


class RecourseSettings(_Section):
    """Changes to actionable features that would turn an unfavourable decision favourable."""

    class Actionable(_Section):
        direction: Literal["up", "down", "both"]
        """Which way the person can move the feature (income up, debt down)."""
        min: float | None = None
        """The lowest value an option may propose (none: unbounded)."""
        max: float | None = None
        """The highest value an option may propose (none: unbounded)."""
        step: float = Field(default=0.0, ge=0)
        """Proposed values are rounded to a multiple of this, away from the person's value (0: exact)."""

        @model_validator(mode="after")
        def _check_bounds(self) -> RecourseSettings.Actionable:
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError("min must not be above max")
            return self

    max_options: int = Field(default=3, ge=0, le=20)
    """Most recourse options given for an unfavourable decision (0 turns recourse off)."""
    features: dict[str, Actionable] = {}
    """Feature name -> {direction, min, max, step}: the only features recourse may change."""
    max_pair_candidates: int = Field(default=4096, ge=1, le=1_000_000)
    """Largest grid (candidate values of one feature times the other's) searched for a pair of features; past it the values nearest the person's are kept."""


class ContestSettings(_Section):
    """Contests of a decision by the person it is about."""

    max_statement_chars: int = Field(default=4000, ge=1, le=100_000)
    """Longest statement a contest may carry (422 past it)."""
    rescore_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long scoring corrected values through the proxy may take before the contest is filed without an answer."""
    v2_input_name: str = "input"
    """The input tensor name used when corrected values of a V2 decision are scored."""


class AuthSettings(_Section):
    """Control plane tokens and roles."""

    class Token(_Section):
        name: str = Field(min_length=1, max_length=128)
        """Who holds the token (recorded as the reviewer in the audit trail)."""
        role: Literal["reviewer", "auditor", "admin", "outcome_writer", "case_handler"]
        """What the token may do (outcome_writer: only POST /outcomes; case_handler: the front office serving the person a decision is about)."""

    tokens: dict[str, Token] = {}
    """Bearer token (or "sha256:<hex digest>" of one) -> {name, role}."""
    tokens_file: Path | None = None
    """A TOML or JSON file with a `tokens` table of the same shape, read at start."""
    group_attribute_roles: list[Literal["reviewer", "auditor", "admin"]] = ["auditor", "admin"]
    """Roles that see decisions' group (protected) attributes."""

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The token table's keys are bearer tokens: a repr (a log line, a test failure)
        # shows their digests.
        for name, value in super().__repr_args__():
            if name == "tokens":
                value = {mask_token(k): v for k, v in value.items()}
            yield name, value


class HubModel(_Section):
    """A model artifact the hub explains decisions of on demand."""

    artifact: Path
    """The model file its servers serve (ONNX, XGBoost JSON/UBJ, LightGBM text)."""
    version: str | None = None
    """Only decisions of this model version are explained with it (null: any version)."""
    background: Path | None = None
    """Background data (Parquet or CSV) for node covers and interventional SHAP."""
    feature_names: list[str] = []
    """Feature names in the model's input order."""
    class_labels: list[str] = []
    """Labels of the model's classes, in probability order (as `model.class_labels`); the people routes at the hub need them."""
    favourable_label: str | None = None
    """The class label that is the favourable outcome for the person (as `model.favourable_label`); reasons, recourse and notices at the hub are taken relative to it. Must be one of `class_labels`."""
    reasons: ReasonSettings | None = None
    """This model's reasons ({count, catalogue, exclude}, as `[reasons]`); none: the hub file's own `[reasons]`."""
    recourse: RecourseSettings | None = None
    """This model's recourse ({max_options, features, max_pair_candidates}, as `[recourse]`); none: the hub file's own `[recourse]`."""
    proxy_url: str | None = Field(default=None, pattern=r"^http://[^\s/]+/?$")
    """A sidecar's data plane in front of this model (http://host:port): corrected values of a contest filed at the hub are scored through it, as a new decision with request id `contest:{id}`; none: contests are recorded without a re-score, and say so."""

    @model_validator(mode="after")
    def _check_favourable(self) -> HubModel:
        if self.favourable_label is not None and self.favourable_label not in self.class_labels:
            raise ValueError(
                f"favourable_label {self.favourable_label!r} is not one of class_labels {self.class_labels}"
            )
        return self


class HubSettings(_Section):
    """The fleet hub (`sidecar hub`): Kafka consumer group -> PostgreSQL, serving lookup and review."""

    host: str = "127.0.0.1"
    """Hub listen address (API, console, metrics, health)."""
    port: int = Field(default=8082, ge=0, le=65535)
    """Hub listen port (0 picks a free one)."""
    database_url: SecretStr | None = None
    """PostgreSQL URL (postgresql://user:password@host:port/db); prefer SIDECAR_HUB__DATABASE_URL over the file. Required by `sidecar hub`."""
    group_id: str = Field(default="sidecar-hub", min_length=1, max_length=255)
    """Kafka consumer group: hubs with the same group share the topics' partitions."""
    batch_max_events: int = Field(default=5000, ge=1, le=100_000)
    """Most events written in one database transaction (one offset commit)."""
    poll_timeout_ms: int = Field(default=200, ge=1, le=60_000)
    """How long one poll waits for events before the hub writes what it has."""
    retention_days: int = Field(default=30, ge=1, le=3650)
    """Decisions and explanations are kept this many days (whole daily partitions are dropped past it)."""
    review_retention_days: int = Field(default=2555, ge=1, le=36_500)
    """Decided review items are kept this many days (7 years by default); the audit chain is never trimmed."""
    pool_size: int = Field(default=8, ge=1, le=256)
    """Database connections the hub's API may hold; the lookup by id holds as many again, of its own (awaited on the API's event loop)."""
    publish_reviews: bool = True
    """Publish the review steps taken at the hubs (claims, releases, expired leases, verdicts, contests) on `kafka.topic_reviews` from the one audit chain, at least once and in chain order, one hub at a time: consumers of the stream (a fairness monitor) see them as they see a sidecar's own. False keeps them in the database only."""
    models: dict[str, HubModel] = {}
    """Model name -> {artifact, version, background, feature_names, class_labels, favourable_label, reasons, recourse, proxy_url}: decisions of these models that were not sampled are explained on demand at lookup (with the `[explainer]` options) and the result kept in the database; the people routes (reasons, notice, recourse, plot, contest) use the same artifact."""

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v


MONITOR_METRICS = (
    "selection_rate",
    "true_positive_rate",
    "false_positive_rate",
    "accuracy",
    "precision",
    "override_rate",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equal_opportunity_difference",
    "psi",
    "ks",
    "top_features",
)


def _header_name(v: str) -> str:
    """An HTTP header name (RFC 9110 token), lower-cased as the data plane compares them."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v):
        raise ValueError("must be an HTTP header name")
    return v.lower()


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value, unit = text[:-1], text[-1:]
    if unit not in units or not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{text!r} is not a duration like 15m, 1h, 1d or 1w")
    return int(value) * units[unit]


class MonitorSettings(_Section):
    """`sidecar monitor`: per-group fairness, error rates, drift and alerts over the event stream."""

    class Rule(_Section):
        name: str = Field(min_length=1, max_length=128)
        """The rule's name, carried by its alerts."""
        metric: str
        """A per-group or per-feature figure of the report: one of MONITOR_METRICS."""
        above: float | None = None
        """Fire when the figure is above this."""
        below: float | None = None
        """Fire when the figure is below this."""
        use: Literal["value", "interval"] = "value"
        """value: the point figure passes the threshold; interval: its whole confidence interval does."""
        k: int = Field(default=3, ge=1, le=50)
        """top_features: how many features by mean |SHAP| must match the reference's."""
        gate: bool = True
        """A firing on the whole period fails `sidecar monitor report --gate`."""

        @model_validator(mode="after")
        def _check_rule(self) -> MonitorSettings.Rule:
            if self.metric not in MONITOR_METRICS:
                raise ValueError(
                    f"metric {self.metric!r} is not one of {', '.join(MONITOR_METRICS)}"
                )
            if self.metric != "top_features" and (self.above is None) == (self.below is None):
                raise ValueError(f"rule {self.name!r}: give exactly one of above, below")
            return self

    source: str | None = None
    """Where events are read: the files sink's folder, or a Kafka bootstrap `host:port` (default: `sink.directory`, or `kafka.bootstrap_servers` when `sink.kind` = kafka)."""
    window: str = "1d"
    """Tumbling event-time window (15m, 1h, 1d, 1w); figures are kept per window and for the whole period."""
    min_group_size: int = Field(default=30, ge=1)
    """A rate whose denominator is below this is reported as insufficient, not computed."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    """Confidence level of the intervals (Wilson, Newcombe, Katz)."""
    attributes: list[str] = []
    """Group attributes to monitor (empty: every attribute the decisions carry)."""
    intersections: list[list[str]] = []
    """Attribute combinations monitored as one (e.g. [["gender", "age_band"]])."""
    reference: Path | None = None
    """Drift reference: an earlier report's JSON (approved), or Parquet/CSV rows of features (default: `model.background`)."""
    drift_against: Literal["reference", "first_window"] = "reference"
    """Compare each window with the reference, or with the period's first window (bins still from the reference)."""
    drift_bins: int = Field(default=10, ge=2, le=100)
    """Bins per feature (quantiles of the reference rows) for PSI and KS."""
    psi_convention: Literal["popmon", "evidently"] = "popmon"
    """How PSI keeps an empty bin finite: popmon (1e-5 added to every bin's share) or evidently (an empty bin's share replaced by 1e-4, or the smallest share / 10^6 when that is at most 1e-4)."""
    alerts: list[Rule] = []
    """Alert rules: tables of name, metric, above or below, use, k, gate (see the README's Monitor section)."""
    interval_s: float = Field(default=30.0, gt=0)
    """How often the continuous monitor reads new events, re-evaluates and writes its state."""
    state_dir: Path = Path("var/monitor")
    """Where the continuous monitor writes its latest report (which the dashboard shows) and, with state_store = folder, its shards' checkpoints; instances then share it."""
    state_store: Literal["folder", "database"] = "folder"
    """Where each shard's statistics are kept with its read offsets, and merged: folder (state_dir) or database (the hub's PostgreSQL, hub.database_url)."""
    group_id: str = Field(default="sidecar-monitor", min_length=1, max_length=255)
    """Monitors with the same group share their shards' states in the database (state_store = database) and the hub's dashboard shows that group."""
    instance: int = Field(default=0, ge=0)
    """This instance's index among `instances`: it takes the decisions whose id hashes to it (files source), or partitions p with p mod instances = instance (Kafka)."""
    instances: int = Field(default=1, ge=1, le=1024)
    """Monitor instances sharing the stream; their shards' states merge into one report."""
    topic_alerts: str = "sidecar.alerts"
    """Topic (files sink folder) the monitor's alert events go to."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the continuous monitor's Prometheus /metrics (null: none)."""
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Event lines longer than this are skipped and counted as invalid."""
    max_tracked_decisions: int = Field(default=2_000_000, ge=1000)
    """Decisions remembered for joining late outcomes, reviews and explanations; past it the oldest are forgotten (their late events are counted as unmatched)."""

    # Keys that were removed -> the key to set instead (refused naming it, file or environment).
    REMOVED: ClassVar[dict[str, str]] = {"topic_outcomes": "kafka.topic_outcomes"}

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed(cls, data: Any) -> Any:
        for name, instead in cls.REMOVED.items():
            if isinstance(data, dict) and name in data:
                raise ValueError(
                    f"monitor.{name} was removed: the monitor reads outcomes from {instead}"
                    " (the topic the sidecar writes them to); set that instead"
                )
        return data

    @field_validator("window")
    @classmethod
    def _check_window(cls, v: str) -> str:
        _seconds(v)
        return v

    @property
    def window_s(self) -> int:
        return _seconds(self.window)

    @model_validator(mode="after")
    def _check_instances(self) -> MonitorSettings:
        if self.instance >= self.instances:
            raise ValueError(f"instance {self.instance} must be below instances {self.instances}")
        for combo in self.intersections:
            if len(combo) < 2 or len(set(combo)) != len(combo):
                raise ValueError(f"intersection {combo} must name two or more distinct attributes")
        return self
