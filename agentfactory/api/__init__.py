"""The HTTP door: FastAPI routes, the edge middleware and the error envelope over `agentfactory.service`."""

from __future__ import annotations

from fastapi import FastAPI

from agentfactory.api.errors import install_error_handlers
from agentfactory.api.middleware import EdgeMiddleware
from agentfactory.api.routes import agents, events, files, keys, logs, system, webhooks, ws
from agentfactory.api.sse import BlockCache


def mount_http_api(app: FastAPI) -> None:
    """The routes of SPEC §3, the error envelope on every error, and the edge middleware."""
    app.state.sse_cache = BlockCache()
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware)
    for module in (system, agents, logs, ws, keys, events, webhooks, files):
        app.include_router(module.router)
