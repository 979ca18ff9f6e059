"""/webhooks: signed webhook endpoints of the caller's key, their deliveries and manual retries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from agentfactory.api.routes.agents import ERRORS, MAX_CURSOR, CallerDep, ServicesDep
from agentfactory.schemas import (
    DeliveryList,
    DeliveryOut,
    ErrorBody,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)
from agentfactory.service import webhooks
from agentfactory.vocabulary import DeliveryStatus

router = APIRouter(
    tags=["webhooks"],
    responses={
        **ERRORS,
        404: {"model": ErrorBody, "description": "E_NOT_FOUND: no such webhook (or delivery) for this key"},
        409: {"model": ErrorBody, "description": "E_CONFLICT: only a dead or failed delivery can be retried"},
    },
)


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Create a webhook (its signing secret is shown this once)",
    operation_id="createWebhook",
    description=(
        "422 E_SCHEMA when the URL resolves to a loopback, private, link-local or metadata address "
        "(unless AGENTFACTORY_WEBHOOK_ALLOW_PRIVATE=true)."
    ),
)
async def create_webhook(body: WebhookCreate, caller: CallerDep, svc: ServicesDep) -> WebhookCreated:
    return await webhooks.create_webhook(svc, caller, body)


@router.get(
    "/webhooks", response_model=WebhookList, summary="The caller's webhooks (admin: all)", operation_id="listWebhooks"
)
async def list_webhooks(caller: CallerDep, svc: ServicesDep) -> WebhookList:
    return await webhooks.list_webhooks(svc, caller)


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut, summary="One webhook", operation_id="getWebhook")
async def get_webhook(webhook_id: str, caller: CallerDep, svc: ServicesDep) -> WebhookOut:
    return await webhooks.get_webhook(svc, caller, webhook_id)


@router.delete(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    summary="Delete a webhook and its deliveries",
    operation_id="deleteWebhook",
)
async def delete_webhook(webhook_id: str, caller: CallerDep, svc: ServicesDep) -> WebhookOut:
    return await webhooks.delete_webhook(svc, caller, webhook_id)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryList,
    summary="A webhook's deliveries with their attempts, newest first",
    operation_id="listWebhookDeliveries",
)
async def list_deliveries(
    webhook_id: str,
    caller: CallerDep,
    svc: ServicesDep,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_CURSOR, description="next_cursor of an earlier page")] = None,
) -> DeliveryList:
    return await webhooks.list_deliveries(svc, caller, webhook_id, status=status, limit=limit, cursor=cursor)


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=DeliveryOut,
    summary="Send a dead delivery again (one attempt, now)",
    operation_id="retryWebhookDelivery",
)
async def retry_delivery(
    webhook_id: str,
    delivery_id: Annotated[int, Path(ge=0, le=MAX_CURSOR)],
    caller: CallerDep,
    svc: ServicesDep,
) -> DeliveryOut:
    return await webhooks.retry_delivery(svc, caller, webhook_id, delivery_id)
