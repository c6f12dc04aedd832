"""Wiring of the hub: database, migrations, ingest, the HTTP app, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading

from sidecar.config import ConfigError, Settings
from sidecar.control.auth import authenticator_from_settings
from sidecar.control.server import ControlPlaneThread
from sidecar.hub import retention, schema
from sidecar.hub.app import create_hub_app
from sidecar.hub.consumer import check as check_consumer
from sidecar.hub.consumer import consumer_config
from sidecar.hub.db import async_pool, connect, pool
from sidecar.hub.explain import HubExplainer, load_models
from sidecar.hub.ingest import Ingest
from sidecar.hub.lookup import HubDecisions
from sidecar.hub.monitor_dashboard import create_hub_monitor_router
from sidecar.hub.people import HubPeople
from sidecar.hub.relay import ReviewRelay
from sidecar.hub.review import HubReviewStore
from sidecar.metrics import Registry
from sidecar.service import bind

log = logging.getLogger("sidecar.hub")

RETENTION_PERIOD_S = 3600.0


def database_url(settings: Settings) -> str:
    url = settings.hub.database_url
    if url is None or not url.get_secret_value():
        raise ConfigError(
            "config key 'hub.database_url' is required by `sidecar hub`"
            " (set SIDECAR_HUB__DATABASE_URL)"
        )
    return url.get_secret_value()


class Hub:
    """The fleet hub: one process, any number of them sharing a database and a consumer group."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        h = settings.hub
        self.registry = registry = Registry()
        url = database_url(settings)
        authenticator = authenticator_from_settings(settings.auth)
        # Loaded (and checked for fidelity) before anything opens: ExplainerError names the key.
        explainers = load_models(h.models, settings.explainer)
        # Each model's reasons and recourse, checked against it before anything opens.
        people = HubPeople(settings, explainers)
        # The consumer's [kafka] keys as librdkafka reads them, before anything connects.
        check_consumer(consumer_config(settings.kafka, h))
        # Migrations before anything serves: a hub never answers over a schema it lacks.
        with connect(url, application_name="sidecar-hub-migrate") as conn:
            applied = schema.migrate(conn)
        if applied:
            log.info("hub schema: applied migrations %s", applied)
        self.pool = pool(url, h.pool_size)
        self.decisions = HubDecisions(self.pool)
        # The lookup's own, awaited on the API's loop (opened and closed with the app's lifespan).
        self.lookup_pool = async_pool(url, h.pool_size)
        self.review_store = HubReviewStore(
            self.pool, registry=registry, lease_seconds=settings.review.lease_seconds
        )
        self.ingest = Ingest(database_url=url, kafka=settings.kafka, hub=h, registry=registry)
        self.relay = (
            ReviewRelay(database_url=url, kafka=settings.kafka, registry=registry)
            if h.publish_reviews
            else None
        )
        self.app = create_hub_app(
            authenticator=authenticator,
            review=settings.review,
            store=self.review_store,
            decisions=self.decisions,
            lookup_pool=self.lookup_pool,
            registry=registry,
            ready_checks=[("database", self._database_ready), ("ingest", self._ingest_ready)],
            open_health=settings.control.open_health,
            open_metrics=settings.control.open_metrics,
            explain_now=HubExplainer(self.pool, h.models, explainers) if explainers else None,
            people=people,
            monitor=create_hub_monitor_router(
                settings, self.pool, authenticator.require("auditor", "admin")
            ),
        )
        self._sock = bind(h.host, h.port)
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self._server: ControlPlaneThread | None = None
        self._stopping = threading.Event()

    async def _database_ready(self) -> bool:
        def ping() -> bool:
            try:
                with self.pool.connection(timeout=2.0) as conn:
                    conn.execute("SELECT 1")
                return True
            except Exception:
                return False

        return await asyncio.get_running_loop().run_in_executor(None, ping)

    async def _ingest_ready(self) -> bool:
        return self.ingest.alive() and self.ingest.connected.is_set()

    async def _expire_leases(self) -> None:
        period = min(self.settings.review.lease_seconds / 4, 30.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            try:
                await loop.run_in_executor(None, self.review_store.expire_leases)
            except Exception:
                log.exception("expiring review leases failed")

    async def _retention(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.apply_retention)
            except Exception:
                log.exception("hub retention failed")
            await asyncio.sleep(RETENTION_PERIOD_S)

    def apply_retention(self) -> retention.Dropped:
        h = self.settings.hub
        with self.pool.connection() as conn:
            return retention.apply(conn, h.retention_days, h.review_retention_days)

    def start(self) -> None:
        self.ingest.start()
        if self.relay is not None:
            self.relay.start()
        self._server = ControlPlaneThread(
            self.app,
            self._sock,
            housekeeping=[self._expire_leases, self._retention],
            on_exit=self._stopping.set,
        )
        self._server.start()
        # Everything loaded at start (fastapi, pydantic's models, the explainers) lives as long
        # as the hub: frozen, a full collection no longer walks it (measured in the hub after
        # start: one 53-60 ms collection of the oldest generation within 5,000 lookups).
        gc.collect()
        gc.freeze()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self.relay is not None:
            self.relay.stop()
        self.ingest.stop()
        self.pool.close()
        self._sock.close()

    def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, stop."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                signal.signal(sig, lambda *_: self._stopping.set())
        self.start()
        try:
            self._stopping.wait()
        finally:
            self.stop()
