"""create_app(settings): builds every part explicitly; the lifespan starts them and tears them down
in reverse. Nothing is created at import time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from agentfactory import __version__
from agentfactory.api.deps import AppContext
from agentfactory.api.errors import install_error_handlers
from agentfactory.api.middleware import EdgeMiddleware
from agentfactory.api.routes import agents, keys, logs, system
from agentfactory.backends.base import Backend
from agentfactory.catalog import Catalog, load_catalog
from agentfactory.gateway.server import ModelGateway
from agentfactory.keys import RateLimiter, StreamLeases, ensure_bootstrap_admin
from agentfactory.mcp.server import build_mcp
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.launcher import Launcher
from agentfactory.runtime.logpump import LogPump
from agentfactory.runtime.reaper import Reaper
from agentfactory.runtime.usage import UsageSampler
from agentfactory.settings import Settings
from agentfactory.store import Store

log = structlog.get_logger("agentfactory.app")


def build_backend(settings: Settings) -> Backend:
    if settings.backend != "docker":
        # The contract allows a Swarm backend; it is not built yet, and silently using the local
        # engine instead would put agents somewhere the operator did not ask for.
        raise ValueError(f"AGENTFACTORY_BACKEND={settings.backend!r} is not available yet; use 'docker'")
    from agentfactory.backends.docker import DockerBackend

    return DockerBackend(instance=settings.instance_id, network_name=settings.agent_network)


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    catalog: Catalog | None = None,
    run_loops: bool = True,
    serve_gateway: bool = True,
) -> FastAPI:
    """The control plane as an ASGI app. `backend` and `catalog` may be given (tests); else built
    from settings. A bad catalog raises CatalogInvalid here, before anything starts."""
    catalog = catalog or load_catalog(settings.catalog)
    metrics = Metrics()
    metrics.prepare_models([m.id for m in catalog.models])
    store = Store(settings.database_url)
    ctx = AppContext(
        settings=settings,
        catalog=catalog,
        store=store,
        backend=backend or build_backend(settings),
        metrics=metrics,
        limiter=RateLimiter(),
        streams=StreamLeases(on_refused=metrics.quota_rejections.labels(reason="streams").inc),
    )
    mcp = build_mcp(ctx)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        # Store calls leave the event loop through the default executor: size it for a server,
        # not for the 2 + 4 threads asyncio picks on a small machine.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=settings.db_threads, thread_name_prefix="db"))
        await asyncio.to_thread(store.migrate)
        with store.session() as s:
            ensure_bootstrap_admin(session=s, admin_key=settings.admin_key)
        hub = Hub(loop)
        pump = LogPump(store=store, hub=hub, metrics=metrics, loop=loop)
        pump.start()
        launcher = Launcher(
            settings=settings, catalog=catalog, store=store, backend=ctx.backend, pump=pump, hub=hub, metrics=metrics
        )
        ctx.hub, ctx.launcher = hub, launcher
        gateway = ModelGateway(
            catalog=catalog,
            store=store,
            socket_path=settings.gateway_socket_dir / "gateway.sock",
            environ=dict(os.environ),
            metrics=metrics,
            logger=structlog.get_logger("agentfactory.gateway"),
        )
        if serve_gateway:
            await gateway.start()
        reaper = Reaper(
            launcher=launcher,
            interval=settings.reaper_interval_seconds,
            retention_days=settings.retention_days,
            start_deadline=settings.start_deadline_seconds,
        )
        app.state.reaper = reaper
        stop = asyncio.Event()
        loops: list[asyncio.Task[None]] = []
        if run_loops:
            try:
                await reaper.recover()
            except Exception as exc:  # the engine may be down at start; the reaper catches up later
                log.warning("recover_failed", error=repr(exc))
            loops.append(loop.create_task(reaper.run(stop)))
            sampler = UsageSampler(store=store, backend=ctx.backend, interval=settings.usage_interval_seconds)
            loops.append(loop.create_task(sampler.run(stop)))
        log.info("control_plane_started", version=__version__, backend=settings.backend)
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            stop.set()
            if loops:
                await asyncio.wait(loops, timeout=10)
            await launcher.shutdown()
            if serve_gateway:
                await gateway.stop()
            await ctx.backend.close()
            store.dispose()
            log.info("control_plane_stopped")

    app = FastAPI(
        title="agentfactory",
        version=__version__,
        description="Launch short-lived, sandboxed, containerized AI agents; follow their output.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware)
    for module in (system, agents, logs, keys):
        app.include_router(module.router)
    app.router.routes.append(mcp.route)
    return app
