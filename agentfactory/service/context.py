"""`Services`: everything a door (HTTP, MCP, WebSocket, dashboard) needs to serve a use case.

Built whole by the composition root (`agentfactory.app.create_app`); the lifespan binds it to the
event loop and starts its threads. Doors receive it and pass it to the use-case functions of
`agentfactory.service`; they never reach past it into the runtime or the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from agentfactory.backends.base import Backend
from agentfactory.catalog import Catalog
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import EVENTS, Hub
from agentfactory.runtime.launcher import Launcher
from agentfactory.runtime.logpump import LogPump
from agentfactory.runtime.rejections import RejectionFlusher
from agentfactory.runtime.replicas import Replica, new_replica_id
from agentfactory.runtime.warm import SandboxPool
from agentfactory.runtime.webhooks import WebhookDeliverer, WebhookDispatcher
from agentfactory.service.auth import AuthCache, LocalRateLimiter, RateLimiter, SharedRateLimiter
from agentfactory.service.leases import StreamLeases
from agentfactory.service.memo import FollowedAgent, GenerationMemo, followed_agent_memo
from agentfactory.service.queue import Capacity, Pace, Queue, QueueDispatcher
from agentfactory.service.views import agent_json
from agentfactory.settings import Settings
from agentfactory.store import Store
from agentfactory.store.blobs import BlobStore, LocalBlobs
from agentfactory.store.bus import PgBus
from agentfactory.store.dbblobs import DbBlobs
from agentfactory.store.server_key import ServerKey

KEYS_CHANGED = "keys"
log = structlog.get_logger("agentfactory.services")


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    store: Store
    backend: Backend
    metrics: Metrics
    hub: Hub
    pump: LogPump
    launcher: Launcher
    replica: Replica
    server_key: ServerKey
    webhook_dispatcher: WebhookDispatcher
    webhook_deliverer: WebhookDeliverer
    blobs: BlobStore
    queue: Queue
    rejections: RejectionFlusher  # each key's quota refusals, to the database every few seconds
    bus: PgBus | None = None
    pool: SandboxPool | None = None  # warm sandboxes: AGENTFACTORY_WARM_POOL_SIZE > 0 on a backend that keeps them
    limiter: RateLimiter = field(default_factory=LocalRateLimiter)
    auth_cache: AuthCache = field(default_factory=AuthCache)
    followed_agents: GenerationMemo[FollowedAgent | None] = field(default_factory=followed_agent_memo)
    streams: StreamLeases = field(default_factory=StreamLeases)

    @classmethod
    def build(
        cls, *, settings: Settings, catalog: Catalog, store: Store, backend: Backend, metrics: Metrics
    ) -> Services:
        hub = Hub()
        replica = Replica(
            store=store,
            backend=backend,
            metrics=metrics,
            replica_id=settings.replica_id or new_replica_id(),
            adopt_after=settings.adopt_after_seconds,
            url=f"http://{settings.host}:{settings.port}",
            host=settings.replica_host,
        )
        pump = LogPump(store=store, hub=hub, metrics=metrics, owner=replica.id)
        server_key = ServerKey()  # loaded by the lifespan, once the schema is migrated
        launcher = Launcher(
            settings=settings,
            catalog=catalog,
            store=store,
            backend=backend,
            pump=pump,
            hub=hub,
            metrics=metrics,
            replica_id=replica.id,
            clock=replica.clock,
            server_key=server_key,
            agent_document=agent_json,
        )
        deliverer = WebhookDeliverer(store=store, metrics=metrics, settings=settings)
        dispatcher = WebhookDispatcher(store=store, metrics=metrics, settings=settings, on_deliveries=deliverer.poke)
        hub.on_events(dispatcher.poke)
        capacity = Capacity()  # determined by the lifespan, from the settings or the engine
        queue = Queue(
            capacity=capacity,
            pace=Pace(store, clock=launcher.clock),
            dispatcher=QueueDispatcher(
                settings=settings,
                store=store,
                launcher=launcher,
                hub=hub,
                metrics=metrics,
                server_key=server_key,
                capacity=capacity,
                agent_document=agent_json,
            ),
        )
        hub.on_events(queue.dispatcher.poke)  # every start and end may free or take a slot
        # Built whenever the backend keeps sandboxes, even with a size of 0: its first pass removes
        # the sandboxes a crashed run with a pool left behind (no container is leaked).
        sandboxes = backend.sandboxes()
        if settings.warm_pool_size > 0 and sandboxes is None:
            log.warning("warm_pool_unsupported", backend=settings.backend, detail="every agent starts cold")
        pool = None
        if sandboxes is not None:
            pool = SandboxPool(
                size=settings.warm_pool_size,
                sandboxes=sandboxes,
                settings=settings,
                catalog=catalog,
                store=store,
                metrics=metrics,
                owner=replica.id,
                max_running=lambda: capacity.max_running,
                busy=lambda: launcher.launches_in_flight() > 0,
                live_owners=lambda: {r.id for r in replica.live(replica.clock())},
            )
            launcher.pool = pool
            queue.pool = pool
            replica.warm = lambda: (pool.idle, pool.size)
            hub.on_events(pool.poke)  # an end frees room for a sandbox
        return cls(
            settings=settings,
            catalog=catalog,
            store=store,
            backend=backend,
            metrics=metrics,
            hub=hub,
            pump=pump,
            launcher=launcher,
            replica=replica,
            bus=None if store.is_sqlite else PgBus(settings.database_url),
            limiter=LocalRateLimiter() if store.is_sqlite else SharedRateLimiter(store),
            server_key=server_key,
            streams=StreamLeases(metrics),
            webhook_dispatcher=dispatcher,
            webhook_deliverer=deliverer,
            blobs=blob_store(settings, store),
            queue=queue,
            rejections=RejectionFlusher(store=store, tally=metrics.rejections_by_key),
            pool=pool,
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the serving event loop, start the log writer, open the webhook client (and, on
        PostgreSQL, the cross-replica bus)."""
        self.hub.bind(loop)
        self.pump.start(loop)
        self.webhook_deliverer.open()
        if self.bus is not None:
            self.hub.publish = self.bus.publish
            self.bus.start(self.replica.id, self._on_bus)

    def stop(self) -> None:
        if self.bus is not None:
            self.hub.publish = None
            self.bus.stop()

    def _on_bus(self, items: list[str]) -> None:
        """Another replica's announcement (listener thread): agents changed, or keys did."""
        if "*" in items:
            self.hub.wake_threadsafe(None)
            self.hub.wake_events_threadsafe()
            self.auth_cache.clear()
            return
        if EVENTS in items:
            self.hub.wake_events_threadsafe()
        if KEYS_CHANGED in items:
            self.auth_cache.clear()
        pks = [int(x) for x in items if x.isdigit()]
        if pks:
            self.hub.wake_threadsafe(pks)

    def keys_changed(self) -> None:
        """A key was revoked or changed here: forget cached callers here and on every replica."""
        self.auth_cache.clear()
        if self.bus is not None:
            self.bus.publish([KEYS_CHANGED])


def blob_store(settings: Settings, store: Store) -> BlobStore:
    """The blob store AGENTFACTORY_FILES_STORE names (SPEC §9); writes to the database are staged in
    the files directory's `.tmp`."""
    if settings.files_in_database():
        return DbBlobs(store, settings.blob_dir() / ".tmp")
    return LocalBlobs(settings.blob_dir())
