"""`Services`: everything a door (HTTP, MCP, WebSocket, dashboard) needs to serve a use case.

Built whole by the composition root (`agentfactory.app.create_app`); the lifespan binds it to the
event loop and starts its threads. Doors receive it and pass it to the use-case functions of
`agentfactory.service`; they never reach past it into the runtime or the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agentfactory.backends.base import Backend
from agentfactory.catalog import Catalog
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.launcher import Launcher
from agentfactory.runtime.logpump import LogPump
from agentfactory.runtime.webhooks import WebhookDeliverer, WebhookDispatcher
from agentfactory.service.auth import AuthCache, RateLimiter
from agentfactory.service.leases import StreamLeases
from agentfactory.service.memo import FollowedAgent, GenerationMemo, followed_agent_memo
from agentfactory.service.queue import Capacity, Pace, Queue, QueueDispatcher
from agentfactory.service.views import agent_json
from agentfactory.settings import Settings
from agentfactory.store import Store
from agentfactory.store.blobs import BlobStore, LocalBlobs
from agentfactory.store.server_key import ServerKey


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
    server_key: ServerKey
    webhook_dispatcher: WebhookDispatcher
    webhook_deliverer: WebhookDeliverer
    blobs: BlobStore
    queue: Queue
    limiter: RateLimiter = field(default_factory=RateLimiter)
    auth_cache: AuthCache = field(default_factory=AuthCache)
    followed_agents: GenerationMemo[FollowedAgent | None] = field(default_factory=followed_agent_memo)
    streams: StreamLeases = field(default_factory=StreamLeases)

    @classmethod
    def build(
        cls, *, settings: Settings, catalog: Catalog, store: Store, backend: Backend, metrics: Metrics
    ) -> Services:
        hub = Hub()
        pump = LogPump(store=store, hub=hub, metrics=metrics)
        server_key = ServerKey()  # loaded by the lifespan, once the schema is migrated
        launcher = Launcher(
            settings=settings,
            catalog=catalog,
            store=store,
            backend=backend,
            pump=pump,
            hub=hub,
            metrics=metrics,
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
        return cls(
            settings=settings,
            catalog=catalog,
            store=store,
            backend=backend,
            metrics=metrics,
            hub=hub,
            pump=pump,
            launcher=launcher,
            server_key=server_key,
            streams=StreamLeases(metrics),
            webhook_dispatcher=dispatcher,
            webhook_deliverer=deliverer,
            blobs=LocalBlobs(settings.blob_dir()),
            queue=queue,
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the serving event loop, start the log writer, open the webhook client."""
        self.hub.bind(loop)
        self.pump.start(loop)
        self.webhook_deliverer.open()
