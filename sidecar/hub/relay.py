"""The review steps taken at the hubs, onto the reviews topic: the audit chain is the outbox.

A review step taken at a hub (a claim, a renewal, a release, an expired lease, a
verdict, a contest) is a record of the fleet's one audit chain, committed with the
step. Fairness monitors and other consumers read review steps from the stream, as
they do when each sidecar keeps its own queue, so this relay publishes the chain's
records as review events, in chain order, from a cursor kept in the database
(`hub_relay`). A batch is sent and acknowledged by the broker (acks=all) before the
cursor moves, in the transaction that holds the cursor's row lock:

- no step is lost: a hub killed, or a broker down, before the cursor moves sends
  the batch again, under the same `event_id`s (derived from the chain), which
  consumers de-duplicate on (the hubs' own ingest among them);
- one hub relays at a time: the others find the cursor's row locked and skip
  their turn (`SKIP LOCKED`), so steps go out in chain order.

`requested` records are not relayed: the sidecar that routed the decision put the
request on the stream itself.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

from sidecar.config import KafkaSettings
from sidecar.hub import audit as chain
from sidecar.hub.db import Conn, connect
from sidecar.metrics import Registry
from sidecar.review.event_body import review_event_body
from sidecar.sinks import events
from sidecar.sinks.kafka import cloudevent_headers, new_producer, producer_config

log = logging.getLogger("sidecar.hub")

# The cursor's row (`hub_relay`, created by the schema's fourth migration).
RELAY = "reviews"
# Records per batch, and the pause between looks when the chain has nothing new: a step
# reaches the stream within about this long, plus the broker's acknowledgement.
BATCH = 500
INTERVAL_S = 0.2
RETRY_S = 1.0
_NOT_RELAYED = frozenset({"requested"})


class ReviewRelay:
    """A thread that publishes the audit chain's new records on `kafka.topic_reviews`."""

    def __init__(
        self,
        *,
        database_url: str,
        kafka: KafkaSettings,
        registry: Registry,
        make_producer: Any = None,
    ) -> None:
        cfg = producer_config(kafka)  # a bad [kafka] key fails the hub's start, named
        self._url = database_url
        self._topic = kafka.topic_reviews
        self._source = kafka.source.encode()
        self._timeout_s = kafka.delivery_timeout_ms / 1000
        self._make_producer = make_producer or partial(new_producer, cfg)
        self._producer: Any = None
        self._published = registry.counter(
            "sidecar_hub_reviews_published_total",
            "Review steps taken at the hubs published on the reviews topic by this hub",
        )
        self._errors = registry.counter(
            "sidecar_hub_relay_errors_total",
            "Failed attempts to publish review steps (the batch is sent again)",
        )
        self.backlog = 0
        registry.gauge(
            "sidecar_hub_relay_backlog",
            "Audit records not yet published, at this hub's last turn",
            fn=lambda: float(self.backlog),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-review-relay", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close_producer()

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception:
                log.debug("closing the relay's producer failed", exc_info=True)

    def _run(self) -> None:
        conn: Conn | None = None
        failing = False
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(self._url, application_name="sidecar-hub-relay")
                moved = self.relay_once(conn)
                if failing:
                    log.warning("publishing review steps again")
                    failing = False
            except Exception as exc:
                self._errors.inc()
                # Once per outage at warning (a broker down fails every turn); the count is in
                # sidecar_hub_relay_errors_total.
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "publishing review steps failed (retrying every %.0f s): %s",
                    RETRY_S,
                    exc,
                )
                failing = True
                if conn is not None:
                    conn.close()
                    conn = None
                self._close_producer()
                self._stop.wait(RETRY_S)
                continue
            if moved < BATCH:
                self._stop.wait(INTERVAL_S)
        if conn is not None:
            conn.close()

    def relay_once(self, conn: Conn) -> int:
        """One turn: publish the records after the cursor (a batch at most), then move it.
        Returns how many records the cursor moved over (0 when another hub has the turn)."""
        with conn.transaction():
            row = conn.execute(
                "SELECT audit_seq FROM hub_relay WHERE name = %s FOR UPDATE SKIP LOCKED",
                (RELAY,),
            ).fetchone()
            if row is None:
                return 0
            records = chain.records(conn, after=int(row[0]), limit=BATCH)
            if not records:
                self.backlog = 0
                return 0
            if self._producer is None:
                self._producer = self._make_producer()
            sends = []
            for rec in records:
                if rec.action in _NOT_RELAYED:
                    continue
                body = review_event_body(rec)
                sends.append(
                    self._producer.send(
                        self._topic,
                        key=rec.decision_id.encode(),
                        value=events.dumps(body),
                        headers=cloudevent_headers(
                            "review", self._source, body["event_id"], body["time"], rec.decision_id
                        ),
                    )
                )
            self._producer.flush(timeout=self._timeout_s)
            for sent in sends:
                sent.get(timeout=0)  # raises what the broker or the client refused
            last = records[-1].seq
            conn.execute(
                "UPDATE hub_relay SET audit_seq = %s, updated_at = now() WHERE name = %s",
                (last, RELAY),
            )
            self.backlog = max(0, chain.head(conn)[0] - last)
        self._published.inc(len(sends))
        return len(records)
