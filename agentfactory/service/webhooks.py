"""The webhook use cases: create (the secret shown once), list, delete, deliveries, manual retry.

A key sees its own webhooks (an admin: all); another key's webhook is not found, never forbidden.
A webhook made by an admin key receives every key's events; any other, its own key's agents' only.
"""

from __future__ import annotations

import base64
import secrets
import time

import structlog

from agentfactory.errors import ConflictError, NotFoundError, SchemaError
from agentfactory.runtime.outbound import UnsafeURL, pin
from agentfactory.schemas import DeliveryList, DeliveryOut, WebhookCreate, WebhookCreated, WebhookList, WebhookOut
from agentfactory.service.auth import Caller, new_id
from agentfactory.service.context import Services
from agentfactory.service.views import delivery_out, webhook_out
from agentfactory.store import queries
from agentfactory.store.tables import WebhookRow
from agentfactory.vocabulary import DeliveryStatus
from agentfactory.webhooks import SECRET_PREFIX

log = structlog.get_logger("agentfactory.service")
MAX_WEBHOOKS_PER_KEY = 100


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


async def create_webhook(svc: Services, caller: Caller, body: WebhookCreate) -> WebhookCreated:
    """Check the URL (scheme, host, every address it resolves to) and store the webhook; its
    signing secret is in the answer this once."""
    try:
        await pin(body.url, allow_private=svc.settings.webhook_allow_private)
    except UnsafeURL as exc:
        raise SchemaError(str(exc), details=[{"loc": ["body", "url"], "msg": str(exc)}]) from None
    if len(await svc.store.run(queries.list_webhooks, key_id=caller.key_id)) >= MAX_WEBHOOKS_PER_KEY:
        raise ConflictError(f"this key already has {MAX_WEBHOOKS_PER_KEY} webhooks; delete one first")
    secret = new_secret()
    row = await svc.store.run(
        queries.insert_webhook,
        id=new_id("wh_", 10),
        key_id=caller.key_id,
        all_keys=caller.admin,
        url=body.url,
        events=[str(e) for e in body.events],
        meta=dict(body.metadata),
        secret=secret,
        created_at=time.time(),
    )
    log.info("webhook_created", webhook_id=row.id, events=row.events)
    return WebhookCreated(**_out(svc, row).model_dump(), secret=secret)


def _out(svc: Services, row: WebhookRow) -> WebhookOut:
    return webhook_out(row, circuit_failures=svc.settings.webhook_circuit_failures, now=time.time())


async def _load(svc: Services, caller: Caller, webhook_id: str) -> WebhookRow:
    row = await svc.store.run(
        queries.get_webhook, webhook_id=webhook_id[:64], key_id=None if caller.admin else caller.key_id
    )
    if row is None:
        raise NotFoundError(f"no webhook {webhook_id[:64]!r}")
    return row


async def list_webhooks(svc: Services, caller: Caller) -> WebhookList:
    rows = await svc.store.run(queries.list_webhooks, key_id=None if caller.admin else caller.key_id)
    return WebhookList(items=[_out(svc, r) for r in rows])


async def get_webhook(svc: Services, caller: Caller, webhook_id: str) -> WebhookOut:
    return _out(svc, await _load(svc, caller, webhook_id))


async def delete_webhook(svc: Services, caller: Caller, webhook_id: str) -> WebhookOut:
    """Delete the webhook at once, with its deliveries (pending ones are not sent)."""
    row = await svc.store.run(
        queries.delete_webhook, webhook_id=webhook_id[:64], key_id=None if caller.admin else caller.key_id
    )
    if row is None:
        raise NotFoundError(f"no webhook {webhook_id[:64]!r}")
    log.info("webhook_deleted", webhook_id=row.id)
    return _out(svc, row)


async def list_deliveries(
    svc: Services, caller: Caller, webhook_id: str, *, status: DeliveryStatus | None, limit: int, cursor: int | None
) -> DeliveryList:
    """The webhook's deliveries, newest first, each with its attempts."""
    hook = await _load(svc, caller, webhook_id)
    rows = await svc.store.run(
        queries.list_deliveries, webhook_id=hook.id, status=status, limit=limit, before_id=cursor
    )
    next_cursor = str(rows[-1][0].id) if len(rows) == limit else None
    return DeliveryList(items=[delivery_out(*r) for r in rows], next_cursor=next_cursor)


async def retry_delivery(svc: Services, caller: Caller, webhook_id: str, delivery_id: int) -> DeliveryOut:
    """Send a dead (or failed) delivery again now: one attempt, past an open circuit (it is the
    probe); if it fails the delivery is dead again."""
    hook = await _load(svc, caller, webhook_id)
    delivery = await svc.store.run(queries.get_delivery, webhook_id=hook.id, delivery_id=delivery_id)
    if delivery is None:
        raise NotFoundError(f"no delivery {delivery_id} of webhook {hook.id}")
    moved = await svc.store.run(
        queries.requeue_delivery,
        webhook_id=hook.id,
        delivery_id=delivery_id,
        now=svc.webhook_deliverer.clock(),
        retry_index=len(svc.settings.webhook_retry_delays),
    )
    if not moved:
        raise ConflictError(f"delivery {delivery_id} is {delivery.status}; only a dead or failed one can be retried")
    svc.webhook_deliverer.poke()
    log.info("webhook_delivery_requeued", webhook_id=hook.id, delivery_id=delivery_id)
    rows = await svc.store.run(
        queries.list_deliveries, webhook_id=hook.id, status=None, limit=1, before_id=delivery_id + 1
    )
    return delivery_out(*rows[0])
