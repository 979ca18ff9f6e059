"""/keys (admin): create, list, revoke API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from agentfactory.api.deps import require_admin
from agentfactory.api.routes.agents import ERRORS, ServicesDep
from agentfactory.schemas import ErrorBody, KeyCreate, KeyCreated, KeyList, KeyOut
from agentfactory.service import keys
from agentfactory.service.auth import Caller

router = APIRouter(
    tags=["keys"],
    responses={**ERRORS, 403: {"model": ErrorBody, "description": "E_FORBIDDEN: not an admin key"}},
)
AdminDep = Annotated[Caller, Depends(require_admin)]


@router.post("/keys", status_code=201, response_model=KeyCreated, summary="Create an API key", operation_id="createKey")
async def create_key(body: KeyCreate, _admin: AdminDep, svc: ServicesDep) -> KeyCreated:
    return await keys.create_key(svc, body)


@router.get("/keys", response_model=KeyList, summary="List API keys", operation_id="listKeys")
async def list_keys(_admin: AdminDep, svc: ServicesDep) -> KeyList:
    return await keys.list_keys(svc)


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke an API key (at once)", operation_id="revokeKey")
async def revoke_key(key_id: str, _admin: AdminDep, svc: ServicesDep) -> KeyOut:
    return await keys.revoke_key(svc, key_id)
