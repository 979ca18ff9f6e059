"""The API-key use cases (admin): create, list, revoke."""

from __future__ import annotations

import time

from agentfactory.errors import CatalogError, NotFoundError
from agentfactory.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from agentfactory.service.auth import new_id, new_key
from agentfactory.service.context import Services
from agentfactory.service.views import key_out
from agentfactory.store import queries


async def create_key(svc: Services, body: KeyCreate) -> KeyCreated:
    """A new key; its secret is in the answer this once and stored only as a hash."""
    unknown = [m for m in body.models if svc.catalog.model(m) is None] + [
        t for t in body.tools if svc.catalog.tool(t) is None
    ]
    if unknown:
        raise CatalogError(f"unknown model(s)/tool(s): {', '.join(unknown)}")
    key = new_key()
    row = await svc.store.run(
        queries.insert_api_key,
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
    )
    return KeyCreated(**key_out(row).model_dump(), key=key)


async def list_keys(svc: Services) -> KeyList:
    return KeyList(items=[key_out(r) for r in await svc.store.run(queries.list_api_keys)])


async def revoke_key(svc: Services, key_id: str) -> KeyOut:
    """Revoke at once: this replica forgets the key now and ends its streams and waits, others
    refuse it within the auth cache's TTL."""
    row = await svc.store.run(queries.revoke_api_key, key_id=key_id, now=time.time())
    await svc.store.run(queries.delete_ui_sessions_of_key, key_id=key_id)
    svc.keys_changed()
    svc.streams.revoke(key_id)
    if row is None:
        raise NotFoundError(f"no key {key_id!r}")
    return key_out(row)
