"""/keys (admin): create, list, revoke API keys."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from agentfactory.api.deps import AppContext, get_ctx, require_admin
from agentfactory.api.views import key_out
from agentfactory.errors import CatalogError, NotFoundError
from agentfactory.keys import Caller, new_id, new_key
from agentfactory.schemas import ErrorBody, KeyCreate, KeyCreated, KeyList, KeyOut
from agentfactory.store import queries
from agentfactory.store.tables import ApiKeyRow

router = APIRouter(
    tags=["keys"],
    responses={403: {"model": ErrorBody, "description": "E_FORBIDDEN: not an admin key"}},
)


@router.post("/keys", status_code=201, response_model=KeyCreated, summary="Create an API key")
async def create_key(
    body: KeyCreate, _admin: Caller = Depends(require_admin), ctx: AppContext = Depends(get_ctx)
) -> KeyCreated:
    unknown = [m for m in body.models if ctx.catalog.model(m) is None] + [
        t for t in body.tools if ctx.catalog.tool(t) is None
    ]
    if unknown:
        raise CatalogError(f"unknown model(s)/tool(s): {', '.join(unknown)}")
    key = new_key()

    def insert(session: Session) -> ApiKeyRow:
        row = ApiKeyRow(
            id=new_id("key_", 10),
            name=body.name,
            key_hash=queries.hash_api_key(key),
            prefix=key[:9],
            admin=body.admin,
            models=list(body.models),
            tools=list(body.tools),
            max_concurrent_agents=body.max_concurrent_agents,
            max_requests_per_minute=body.max_requests_per_minute,
            max_ttl_seconds=body.max_ttl_seconds,
            max_streams=body.max_streams,
            created_at=time.time(),
            lock_version=0,
        )
        session.add(row)
        session.flush()
        return row

    row = await ctx.run_db(insert)
    return KeyCreated(**key_out(row).model_dump(), key=key)


@router.get("/keys", response_model=KeyList, summary="List API keys")
async def list_keys(_admin: Caller = Depends(require_admin), ctx: AppContext = Depends(get_ctx)) -> KeyList:
    rows = await ctx.run_db(queries.list_api_keys)
    return KeyList(items=[key_out(r) for r in rows])


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke an API key (at once)")
async def revoke_key(
    key_id: str, _admin: Caller = Depends(require_admin), ctx: AppContext = Depends(get_ctx)
) -> KeyOut:
    def revoke(session: Session) -> ApiKeyRow | None:
        row = queries.get_api_key(session=session, key_id=key_id)
        if row is not None and row.revoked_at is None:
            row.revoked_at = time.time()
        return row

    row = await ctx.run_db(revoke)
    ctx.auth_cache.clear()
    ctx.streams.revoke(key_id)
    if row is None:
        raise NotFoundError(f"no key {key_id!r}")
    return key_out(row)
