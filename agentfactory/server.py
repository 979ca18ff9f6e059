"""Running the control plane: `serve(settings)` under uvicorn, and `reap_once(settings)`."""

from __future__ import annotations

import asyncio
import gc
import sys

import uvicorn

from agentfactory.errors import CatalogInvalid
from agentfactory.observability.logging import configure_logging
from agentfactory.settings import Settings

WRITE_BUFFER_BYTES = 16_384


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a smaller write buffer per connection. asyncio (and uvloop)
    pause a response's writes once 64 KiB wait in user space; here at 16 KiB, so a client that stops
    reading its stream holds that (plus one slice of events) of the control plane's memory, and a
    thousand such clients hold about 30 MB, not 100 (SPEC §14)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    def connection_made(self: asyncio.Protocol, transport: asyncio.BaseTransport) -> None:
        # asyncio's and uvloop's transports both have it (uvloop's is no asyncio.WriteTransport)
        set_limits = getattr(transport, "set_write_buffer_limits", None)
        if set_limits is not None:
            set_limits(high=WRITE_BUFFER_BYTES)
        AutoHTTPProtocol.connection_made(self, transport)

    return type("BoundedWriteBufferProtocol", (AutoHTTPProtocol,), {"connection_made": connection_made})


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    from agentfactory.app import create_app

    try:
        app = create_app(settings)
    except (CatalogInvalid, ValueError) as exc:
        print(f"agentfactory: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # What start-up built (modules, the app, its schemas, the ORM's mappers) lives as long as the
    # process. Frozen, the cyclic GC no longer re-scans it on every full collection (those took
    # 30-140 ms here, a pause that every request in flight waits out).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        http=http_protocol(),
    )


def reap_once(settings: Settings) -> None:
    """One reaper pass from the command line (expire, fail stuck, mark lost, remove orphans, purge)."""
    configure_logging(settings.log_level)
    from agentfactory.app import create_app

    app = create_app(settings, run_loops=False, serve_gateway=False)

    async def once() -> None:
        async with app.router.lifespan_context(app):
            await app.state.reaper.run_once()

    asyncio.run(once())
