"""The composition root: `create_app(settings)` builds every part explicitly, mounts the doors (HTTP,
MCP) over the services, and its lifespan starts the parts and tears them down in reverse. Nothing is
created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from agentfactory import __version__
from agentfactory.api import mount_http_api
from agentfactory.backends import egress
from agentfactory.backends.base import Backend
from agentfactory.catalog import Catalog, load_catalog
from agentfactory.errors import NetworkPolicyError, RuntimeUnavailableError
from agentfactory.gateway.limits import GatewayLimits
from agentfactory.gateway.relay_door import GatewayRelay, RelayDoor, split_address
from agentfactory.gateway.seat import GatewaySeat
from agentfactory.gateway.server import ModelGateway
from agentfactory.mcp.server import build_mcp
from agentfactory.observability.logging import describe_error
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.reaper import Reaper
from agentfactory.runtime.usage import UsageSampler
from agentfactory.service.auth import check_admin_key, ensure_bootstrap_admin
from agentfactory.service.context import Services
from agentfactory.settings import Settings
from agentfactory.store import Store
from agentfactory.ui import mount_ui

log = structlog.get_logger("agentfactory.app")


def build_backend(settings: Settings) -> Backend:
    if settings.swarm_relay and settings.backend != "swarm":
        raise ValueError("AGENTFACTORY_SWARM_RELAY is for AGENTFACTORY_BACKEND=swarm")
    if settings.backend == "swarm":
        from agentfactory.backends.swarm import SwarmBackend

        swarm = SwarmBackend(
            instance=settings.instance_id,
            network_name=settings.agent_network,
            stop_grace_seconds=settings.stop_grace_seconds,
            placement_timeout=settings.swarm_placement_seconds,
            relay=settings.swarm_relay,
        )
        # Refuses (SwarmRefused, a ValueError) a swarm that would run agents with less than the sandbox.
        swarm.verify(settings.runtime_image)
        return swarm
    from agentfactory.backends.docker import DockerBackend

    return DockerBackend(instance=settings.instance_id, network_name=settings.agent_network)


def build_relay(settings: Settings, gateway: ModelGateway, metrics: Metrics) -> GatewayRelay:
    """The swarm's node relay: the gateway's TLS door and the global service that reaches it."""
    from agentfactory.backends.swarm_relay import SwarmRelayService

    split_address(settings.swarm_relay_listen)  # ValueError (refusing to start) when it is no host:port
    if settings.swarm_relay_address:
        split_address(settings.swarm_relay_address)
    logger = structlog.get_logger("agentfactory.gateway")
    door = RelayDoor(
        gateway_socket=gateway.socket_path, listen=settings.swarm_relay_listen, metrics=metrics, logger=logger
    )
    nodes = SwarmRelayService(
        instance=settings.instance_id,
        image=settings.runtime_image,
        socket_name=gateway.socket_path.name,
        logger=logger,
    )
    return GatewayRelay(door, nodes, address=settings.swarm_relay_address)


async def prepare_agent_network(backend: Backend, catalog: Catalog, network: str) -> None:
    """At start, when the catalog has a network tool: the agents' bridge made and its egress policy
    installed and read back, so the log says now whether network tools will be refused and why.
    Every network launch checks again (the engine may be down now, the rules flushed later)."""
    if not any(t.network for t in catalog.tools):
        return
    try:
        await backend.prepare_network(network)
        log.info("agent_network_ready", network=network)
    except NetworkPolicyError as exc:
        log.error("network_tools_refused", network=network, reason=exc.message)
    except RuntimeUnavailableError as exc:
        log.warning("agent_network_not_prepared", network=network, error=exc.message)


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    catalog: Catalog | None = None,
    run_loops: bool = True,
    serve_gateway: bool = True,
) -> FastAPI:
    """The control plane as an ASGI app. `backend` and `catalog` may be given (tests); else built
    from settings. A bad catalog raises CatalogInvalid, a short admin key ValueError, here, before
    anything starts."""
    check_admin_key(settings.admin_key)
    catalog = catalog or load_catalog(settings.catalog)
    egress.check_resolvers(settings.agent_dns)
    metrics = Metrics()
    metrics.prepare_models([m.id for m in catalog.models])
    store = Store(settings.database_url)
    svc = Services.build(
        settings=settings, catalog=catalog, store=store, backend=backend or build_backend(settings), metrics=metrics
    )
    mcp = build_mcp(svc)
    gateway = ModelGateway(
        catalog=catalog,
        store=store,
        socket_path=settings.gateway_socket_dir / "gateway.sock",
        environ=dict(os.environ),
        metrics=metrics,
        logger=structlog.get_logger("agentfactory.gateway"),
        limits=GatewayLimits.from_settings(settings),
        blobs=svc.blobs,
    )
    seat = GatewaySeat(gateway, relay=build_relay(settings, gateway, metrics) if settings.swarm_relay else None)
    reaper = Reaper(
        launcher=svc.launcher,
        replica=svc.replica,
        interval=settings.reaper_interval_seconds,
        retention_days=settings.retention_days,
        event_retention_days=settings.event_retention_days,
        start_deadline=settings.start_deadline_seconds,
        blobs=svc.blobs,
    )
    sampler = UsageSampler(
        store=store, backend=svc.backend, interval=settings.usage_interval_seconds, owner=svc.replica.id
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        # Store calls leave the event loop through the default executor: size it for a server,
        # not for the 2 + 4 threads asyncio picks on a small machine.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=settings.db_threads, thread_name_prefix="db"))
        await asyncio.to_thread(store.migrate)
        await asyncio.to_thread(ensure_bootstrap_admin, store=store, admin_key=settings.admin_key)
        await asyncio.to_thread(svc.server_key.load, store)
        svc.start(loop)
        stop = asyncio.Event()
        loops: list[asyncio.Task[None]] = []
        if serve_gateway and not await seat.take():
            # Another replica on this machine serves the socket: take over if it dies.
            log.info("gateway_served_by_another_replica", socket=str(gateway.socket_path))
            loops.append(loop.create_task(seat.run(stop)))

        async def lease() -> None:
            try:
                await svc.replica.run_once()  # the lease, the database's clock, the engine's id
            except Exception as exc:  # the lease loop retries
                log.warning("lease_failed", error=describe_error(exc))

        await asyncio.gather(
            prepare_agent_network(svc.backend, catalog, settings.agent_network),
            svc.queue.capacity.determine(settings, svc.backend, catalog),
            *([lease()] if run_loops else []),
        )
        metrics.max_running_agents.set(svc.queue.capacity.max_running)
        if run_loops:
            try:
                await reaper.recover()
            except Exception as exc:  # the controller catches up on its next passes
                log.warning("recover_failed", error=describe_error(exc))
            loops.append(loop.create_task(svc.replica.run(stop)))
            loops.append(loop.create_task(reaper.run(stop)))
            loops.append(loop.create_task(sampler.run(stop)))
            loops.append(loop.create_task(svc.rejections.run(stop)))
            loops.append(loop.create_task(svc.webhook_dispatcher.run(stop)))
            loops.append(loop.create_task(svc.webhook_deliverer.run(stop)))
            # After recovery: agents that had left the queue but not started are back in it.
            loops.append(loop.create_task(svc.queue.dispatcher.run(stop)))
            if svc.pool is not None:  # its first pass removes sandboxes nobody holds, then fills
                loops.append(loop.create_task(svc.pool.run(stop)))
        log.info("control_plane_started", version=__version__, backend=settings.backend, replica_id=svc.replica.id)
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            stop.set()
            if loops:
                await asyncio.wait(loops, timeout=10)
            await svc.webhook_deliverer.close()
            await svc.queue.dispatcher.drain()
            if svc.pool is not None:
                await svc.pool.drain()
            await svc.launcher.shutdown()
            with contextlib.suppress(Exception):  # the last seconds' refusals
                await svc.rejections.run_once()
            if svc.replica.leasing:
                await svc.replica.release()  # after capture stopped: our agents are adopted at once
            if serve_gateway:
                await seat.release()
            svc.stop()
            await svc.backend.close()
            store.dispose()
            log.info("control_plane_stopped")

    app = FastAPI(
        title="agentfactory",
        version=__version__,
        description="Launch short-lived, sandboxed, containerized AI agents; follow their output.",
        lifespan=lifespan,
    )
    app.state.services = svc
    app.state.reaper = reaper
    mount_http_api(app)
    mount_ui(app)
    app.router.routes.append(mcp.route)
    return app
