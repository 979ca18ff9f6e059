"""Running the control plane: `serve(settings)` under uvicorn, and `reap_once(settings)`."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from agentfactory.errors import CatalogInvalid
from agentfactory.observability.logging import configure_logging
from agentfactory.settings import Settings


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    from agentfactory.api.app import create_app

    try:
        app = create_app(settings)
    except (CatalogInvalid, ValueError) as exc:
        print(f"agentfactory: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def reap_once(settings: Settings) -> None:
    """One reaper pass from the command line (expire, fail stuck, mark lost, remove orphans, purge)."""
    configure_logging(settings.log_level)
    from agentfactory.api.app import create_app

    app = create_app(settings, run_loops=False, serve_gateway=False)

    async def once() -> None:
        async with app.router.lifespan_context(app):
            await app.state.reaper.run_once()

    asyncio.run(once())
