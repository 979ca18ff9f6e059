"""Admission: may this caller run this agent now? Catalog, key policy, quota, capacity, idempotency.

`check_request` is pure policy; `admit` writes the `pending` (or `queued`) row atomically with the
idempotency, the key's concurrency quota and the cluster's capacity (the key's row is locked first,
then the capacity row, so two admissions of one key serialise and no slot is given twice).
"""

from __future__ import annotations

import hashlib
import time

import structlog

from agentfactory.catalog import Catalog
from agentfactory.errors import CapacityError, ConflictError, ForbiddenError, QuotaError, SchemaError
from agentfactory.observability.metrics import Metrics
from agentfactory.schemas import AgentCreate
from agentfactory.service.auth import Caller, new_id
from agentfactory.service.queue import queue_positions
from agentfactory.service.views import agent_out
from agentfactory.settings import Settings
from agentfactory.store import Session, queries
from agentfactory.store.server_key import ServerKey
from agentfactory.store.tables import AgentRow
from agentfactory.vocabulary import AgentStatus, EventType

log = structlog.get_logger("agentfactory.admission")
IDEMPOTENCY_WINDOW_SECONDS = 86_400


def request_hash(req: AgentCreate, key: ServerKey) -> str:
    """Keyed: the request holds the secrets, and its fingerprint is kept beside the agent."""
    body = req.model_dump()
    if not body["queue_timeout_seconds"]:  # fingerprints of requests made before the queue existed hold
        del body["queue_timeout_seconds"]
    return key.request_hash(body)


def check_request(*, catalog: Catalog, settings: Settings, caller: Caller, req: AgentCreate) -> int:
    """Validate the request against the catalog and the caller's key; returns the effective TTL."""
    catalog.check_request(model=req.model, tools=req.tools, ttl_seconds=req.ttl_seconds)
    if len(req.prompt) > settings.max_prompt_chars:
        raise SchemaError(
            f"prompt is {len(req.prompt)} characters; at most {settings.max_prompt_chars}",
            details=[{"loc": ["body", "prompt"], "max_length": settings.max_prompt_chars}],
        )
    if caller.models and req.model not in caller.models:
        raise ForbiddenError(f"this key may not use model {req.model!r}")
    refused = [t for t in req.tools if caller.tools and t not in caller.tools]
    if refused:
        raise ForbiddenError(f"this key may not use tool(s): {', '.join(refused)}")
    ttl = req.ttl_seconds or catalog.limits.default_ttl_seconds
    if ttl > caller.max_ttl_seconds:
        raise SchemaError(
            f"ttl_seconds {ttl} is above this key's max_ttl_seconds {caller.max_ttl_seconds}",
            details=[{"loc": ["body", "ttl_seconds"], "max": caller.max_ttl_seconds}],
        )
    limits = catalog.limits
    if req.token_budget is not None and req.token_budget > limits.max_token_budget:
        raise SchemaError(
            f"token_budget {req.token_budget} is above the catalog's max_token_budget {limits.max_token_budget}",
            details=[{"loc": ["body", "token_budget"], "max": limits.max_token_budget}],
        )
    return ttl


def admit(
    *,
    session: Session,
    catalog: Catalog,
    metrics: Metrics,
    caller: Caller,
    req: AgentCreate,
    ttl: int,
    idempotency_key: str | None,
    server_key: ServerKey,
    max_running: int,
    owner: str | None = None,
) -> tuple[AgentRow, bool]:
    """Insert the pending row, atomically with the idempotency, concurrency and capacity checks.
    Returns (agent, replayed): a replay is the agent an earlier request with the same key and body
    made. One transaction: run it with `Store.run`. The agent's gateway token is derived from its id
    (`ServerKey.gateway_token`); only its hash is stored.

    When the key's quota or the cluster (`max_running` slots) is full, a request with
    `queue_timeout_seconds` > 0 is admitted `queued` (so is one that would pass agents already
    queued: slots go in queue order); without it, E_QUOTA or E_CAPACITY as before the queue."""
    rhash = request_hash(req, server_key)
    queries.lock_api_key(session=session, key_id=caller.key_id)
    now = time.time()
    if idempotency_key:
        existing = queries.find_idempotent_agent(session=session, key_id=caller.key_id, idempotency_key=idempotency_key)
        if existing is not None and existing.created_at > now - IDEMPOTENCY_WINDOW_SECONDS:
            # (no fingerprint: made before fingerprints were keyed, see migration 0004)
            if existing.request_hash not in (rhash, None):
                raise ConflictError("this Idempotency-Key was used with another request body")
            return existing, True
        if existing is not None:  # older than 24 h: the key may be reused
            queries.update_agent(session=session, pk=existing.pk, idempotency_key=None)
    active = queries.count_active_agents(session=session, key_id=caller.key_id)
    queries.lock_capacity(session=session)
    cluster = queries.count_cluster_active(session=session)
    status, queue_round, queue_deadline = AgentStatus.PENDING, None, None
    if req.queue_timeout_seconds:
        # Also when admitted at once: it may still wait for a node when the cluster cannot place it.
        queue_deadline = now + req.queue_timeout_seconds
        if (
            active >= caller.max_concurrent_agents
            or cluster >= max_running
            or queries.count_queued(session=session) > 0
        ):
            status = AgentStatus.QUEUED
            queue_round = queries.next_queue_round(session=session, key_id=caller.key_id)
    elif active >= caller.max_concurrent_agents:
        metrics.quota_rejected("concurrency", caller.key_id)
        raise QuotaError(
            f"this key already runs {active} agents (max_concurrent_agents {caller.max_concurrent_agents})",
            retry_after=2,
        )
    elif cluster >= max_running:
        metrics.quota_rejected("capacity", caller.key_id)
        raise CapacityError(
            f"the cluster runs {cluster} agents, its capacity (max_running {max_running}); "
            "retry later, or set queue_timeout_seconds to wait in the queue",
            retry_after=2,
        )
    agent_id = new_id("ag_")
    token = server_key.gateway_token(agent_id)
    row = queries.insert_agent(
        session=session,
        id=agent_id,
        key_id=caller.key_id,
        status=status,
        model=req.model,
        tools=list(req.tools),
        prompt=req.prompt,
        env=dict(req.env),
        secrets=dict(req.secrets),
        meta=dict(req.metadata),
        ttl_seconds=ttl,
        token_budget=req.token_budget or catalog.limits.default_token_budget,
        created_at=now,
        expires_at=now + ttl,
        gateway_token_hash=hashlib.sha256(token.encode()).hexdigest(),
        tokens_prompt=0,
        tokens_completion=0,
        model_calls=0,
        log_lines=0,
        log_bytes=0,
        log_dropped_lines=0,
        log_dropped_bytes=0,
        stdout_consumed=0,
        stderr_consumed=0,
        idempotency_key=idempotency_key,
        request_hash=rhash,
        owner=owner,
        queue_round=queue_round,
        queue_deadline=queue_deadline,
    )
    if req.workspace is not None or req.artifacts:
        if (
            req.workspace is not None
            and queries.use_upload(session=session, upload_id=req.workspace, key_id=caller.key_id, now=now) is None
        ):
            # Another key's upload, an expired or unknown one: the same answer (the transaction is undone).
            raise SchemaError(
                f"workspace {req.workspace!r} is not an upload of this key (unknown, expired or another key's)",
                details=[{"loc": ["body", "workspace"]}],
            )
        queries.insert_agent_files(session=session, agent_pk=row.pk, workspace=req.workspace, artifacts=req.artifacts)
    if queue_round is not None:  # the outbox: `agent.queued` commits with the row (SPEC §11)
        position = queue_positions(queries.queue_order(session=session)).get(row.pk)
        document = agent_out(row, queue_position=position).model_dump_json()
        queries.append_event(
            session=session, type=EventType.QUEUED, agent_id=row.id, key_id=row.key_id, agent=document, at=now
        )
    return row, False
