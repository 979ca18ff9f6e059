"""What routes get from the app: its context and the caller the edge middleware authenticated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentfactory.api.sse import BlockCache, GenerationMemo, StreamAgent, stream_agent_memo
from agentfactory.backends.base import Backend
from agentfactory.catalog import Catalog
from agentfactory.errors import AuthError, ForbiddenError, NotFoundError
from agentfactory.keys import AuthCache, Caller, RateLimiter, StreamLeases
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.launcher import Launcher
from agentfactory.settings import Settings
from agentfactory.store import Store, queries
from agentfactory.store.tables import AgentRow

T = TypeVar("T")
bearer = HTTPBearer(auto_error=False, description="an agentfactory API key")


@dataclass
class AppContext:
    settings: Settings
    catalog: Catalog
    store: Store
    backend: Backend
    metrics: Metrics
    limiter: RateLimiter
    sse_cache: BlockCache = field(default_factory=BlockCache)
    stream_agents: GenerationMemo[StreamAgent | None] = field(default_factory=stream_agent_memo)
    auth_cache: AuthCache = field(default_factory=AuthCache)
    streams: StreamLeases = field(default_factory=StreamLeases)
    hub: Hub | None = None
    launcher: Launcher | None = None

    async def run_db(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run a query function in a fresh transaction, off the event loop."""

        def call() -> T:
            with self.store.session() as s:
                return fn(session=s, **kwargs)

        return await asyncio.to_thread(call)

    async def read_agent(self, *, agent_id: str, key_id: str | None) -> AgentRow | None:
        """One agent by id. On SQLite it is read on the event loop by the store's point reader
        (well under a millisecond, never waiting for a lock in WAL mode): a hop to a thread and
        back would cost more than the read. PostgreSQL's reads go through a thread."""
        if self.store.point_reader is not None:
            return self.store.point_reader.get_agent(agent_id=agent_id, key_id=key_id)
        return await self.run_db(queries.get_agent, agent_id=agent_id, key_id=key_id)


async def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def get_caller(request: Request, _creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    caller: Caller | None = request.scope.get("state", {}).get("caller")
    if caller is None:
        raise AuthError("missing Authorization: Bearer <api key>")
    return caller


async def require_admin(caller: Caller = Depends(get_caller)) -> Caller:
    if not caller.admin:
        raise ForbiddenError("this route is for admin keys only")
    return caller


async def load_agent(ctx: AppContext, caller: Caller, agent_id: str) -> AgentRow:
    """The agent if the caller may see it; another key's agent is a 404, never a 403."""
    if len(agent_id) > 64:
        raise NotFoundError(f"no agent {agent_id[:64]!r}")
    row = await ctx.read_agent(agent_id=agent_id, key_id=None if caller.admin else caller.key_id)
    if row is None:
        raise NotFoundError(f"no agent {agent_id!r}")
    structlog.contextvars.bind_contextvars(agent_id=row.id)
    return row
