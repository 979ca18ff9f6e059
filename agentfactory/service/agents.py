"""The agent use cases, once for every door: create, get, list, cancel, extend, result, logs.

Each takes the `Services` and the `Caller`, enforces what the caller may see (another key's agent
is not found, never forbidden) and answers with wire models. HTTP routes, MCP tools and the
WebSocket are thin adapters over these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from agentfactory.errors import ConflictError, NotFoundError, SchemaError
from agentfactory.runtime.network_gate import network_ready
from agentfactory.schemas import AgentCreate, AgentList, AgentOut, AgentResult, LogLine, LogPage
from agentfactory.service import admission, queue
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services
from agentfactory.service.views import agent_out, agent_result, log_lines, manifest_of
from agentfactory.store import queries
from agentfactory.store.tables import ACTIVE, TERMINAL, AgentRow
from agentfactory.vocabulary import STDERR, STDOUT, AgentStatus, Reason

log = structlog.get_logger("agentfactory.service")
MAX_ID_LENGTH = 64
MAX_METADATA_FILTERS = 16
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 1024  # the limits of AgentCreate.metadata
MAX_LOG_PAGE = 5000
MAX_PAGE_BYTES = 1024 * 1024  # of text: a page of long lines stops early, and its next_cursor says where


async def create_agent(
    svc: Services, caller: Caller, req: AgentCreate, *, idempotency_key: str | None = None
) -> tuple[AgentOut, bool]:
    """Admit and launch an agent. Returns (agent, replayed). E_RUNTIME leaves nothing behind."""
    ttl = admission.check_request(catalog=svc.catalog, settings=svc.settings, caller=caller, req=req)
    # E_CATALOG before anything is stored (SPEC §14).
    await network_ready(svc.backend, svc.catalog, svc.settings.agent_network, req.tools)
    row, replayed = await svc.store.run(
        admission.admit,
        catalog=svc.catalog,
        metrics=svc.metrics,
        caller=caller,
        req=req,
        ttl=ttl,
        idempotency_key=idempotency_key,
        server_key=svc.server_key,
        owner=svc.launcher.replica_id,
        max_running=svc.queue.capacity.max_running,
    )
    if replayed:
        return await present(svc, row), True
    svc.metrics.agents_created.labels(model=row.model).inc()
    log.info("agent_created", agent_id=row.id, model=row.model, tools=row.tools, ttl_seconds=ttl, status=row.status)
    if row.status == AgentStatus.QUEUED:
        svc.hub.bump_events()  # `agent.queued` is in the log (and the dispatcher looks for a slot)
        return await present(svc, row), False
    launched = await svc.launcher.launch(row, svc.server_key.gateway_token(row.id))
    # Queued after all when the cluster could not place it (runtime/placement.py): with its position.
    return await present(svc, launched), False


async def present(svc: Services, row: AgentRow) -> AgentOut:
    """The agent document; a queued agent's carries its position and estimated start, read now."""
    return await queue.present(svc.queue, svc.store, row)


async def load_agent(svc: Services, caller: Caller, agent_id: str) -> AgentRow:
    """The agent if the caller may see it; another key's agent is a 404, never a 403.

    On SQLite the row is read on the event loop by the store's point reader (well under a
    millisecond, never waiting for a lock in WAL mode): a hop to a thread and back would cost
    more than the read. PostgreSQL's is one round trip on the event loop (store/pgpoint.py)."""
    if len(agent_id) > MAX_ID_LENGTH:
        raise NotFoundError(f"no agent {agent_id[:MAX_ID_LENGTH]!r}")
    key_id = None if caller.admin else caller.key_id
    reader, pg_point = svc.store.point_reader, svc.store.pg_point
    if reader is not None:
        row = reader.get_agent(agent_id=agent_id, key_id=key_id)
    elif pg_point is not None:
        row = await pg_point.get_agent(agent_id=agent_id, key_id=key_id)
    else:
        row = await svc.store.run(queries.get_agent, agent_id=agent_id, key_id=key_id)
    if row is None:
        raise NotFoundError(f"no agent {agent_id!r}")
    structlog.contextvars.bind_contextvars(agent_id=row.id)
    return row


async def get_agent(svc: Services, caller: Caller, agent_id: str) -> AgentOut:
    return await present(svc, await load_agent(svc, caller, agent_id))


async def list_agents(
    svc: Services,
    caller: Caller,
    *,
    status: AgentStatus | None,
    limit: int,
    cursor: int | None,
    metadata: Sequence[tuple[str, str]] = (),
    model: str | None = None,
) -> AgentList:
    """The caller's agents (an admin's: everyone's), newest first; `cursor` from an earlier page.
    `metadata`: (key, value) pairs that must all match the agent's metadata (values compared as
    text: `42` matches the string "42" and the number 42, `true` the boolean)."""
    if len(metadata) > MAX_METADATA_FILTERS:
        raise SchemaError(f"at most {MAX_METADATA_FILTERS} metadata filters")
    for key, value in metadata:
        if not key or len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise SchemaError(
                f"metadata filter keys are 1 to {MAX_METADATA_KEY} and values at most {MAX_METADATA_VALUE} characters",
                details=[{"loc": ["query", f"metadata.{key[:MAX_METADATA_KEY]}"]}],
            )
    rows = await svc.store.run(
        queries.list_agents,
        key_id=None if caller.admin else caller.key_id,
        status=status,
        limit=limit,
        before_pk=cursor,
        metadata=tuple(metadata),
        model=model,
    )
    next_cursor = str(rows[-1].pk) if len(rows) == limit else None
    return AgentList(items=await queue.present_many(svc.queue, svc.store, rows), next_cursor=next_cursor)


async def cancel_agent(svc: Services, caller: Caller, agent_id: str) -> AgentOut:
    """Stop the agent now (`cancelled`); a finished agent is answered as it is. A queued agent
    leaves the queue `cancelled` and never starts (unless it got its slot first: then it is stopped)."""
    row = await load_agent(svc, caller, agent_id)
    if row.status == AgentStatus.QUEUED:
        await queue.end_queued(svc.queue.dispatcher, row.pk, AgentStatus.CANCELLED, Reason.CANCELLED, None)
        row = await svc.launcher.load(row.pk) or row
        if row.status != AgentStatus.PENDING:
            return agent_out(row)
        # It left the queue meanwhile: its launch is in flight; stop it like any starting agent.
    return agent_out(await svc.launcher.stop(row, Reason.CANCELLED, svc.settings.stop_grace_seconds))


async def extend_ttl(svc: Services, caller: Caller, agent_id: str, ttl_seconds: int) -> AgentOut:
    """An active agent's `expires_at` becomes now + ttl_seconds, within the catalog's and key's maximum."""
    row = await load_agent(svc, caller, agent_id)
    limit = min(svc.catalog.limits.max_ttl_seconds, caller.max_ttl_seconds)
    if ttl_seconds > limit:
        raise SchemaError(
            f"ttl_seconds {ttl_seconds} is above max_ttl_seconds {limit}",
            details=[{"loc": ["body", "ttl_seconds"], "max": limit}],
        )
    if row.status not in ACTIVE:
        raise ConflictError(f"agent {row.id} is {row.status}; only a running agent's TTL can change")
    return agent_out(await svc.launcher.set_expiry(row, svc.launcher.clock() + ttl_seconds))


async def get_result(svc: Services, caller: Caller, agent_id: str) -> AgentResult:
    return await result_of(svc, await load_agent(svc, caller, agent_id))


async def result_of(svc: Services, row: AgentRow) -> AgentResult:
    """The CI document of an agent the caller may see, with its artifacts' manifest when it asked for any."""
    result = agent_result(row)
    files = await svc.store.run(queries.get_agent_files, agent_pk=row.pk)
    if files is not None and files.artifacts:
        result.artifacts = manifest_of(row, await svc.store.run(queries.list_artifacts, agent_pk=row.pk))
    return result


async def read_logs(
    svc: Services, caller: Caller, agent_id: str, *, after: int, limit: int, stream: str | None = None
) -> LogPage:
    """A page of captured lines after seq `after`; `complete` once the agent is terminal and the
    page reaches its last line. A page stops early past MAX_PAGE_BYTES (its next_cursor says where)."""
    row = await load_agent(svc, caller, agent_id)
    stream_no = {"stdout": STDOUT, "stderr": STDERR}.get(stream or "")
    rows, more = await svc.store.run(
        queries.read_log_page, agent_pk=row.pk, after=after, limit=limit, stream=stream_no, max_bytes=MAX_PAGE_BYTES
    )
    lines = log_lines(rows)
    next_cursor = str(rows[-1][0]) if rows else str(after)
    return LogPage(lines=lines, next_cursor=next_cursor, complete=row.status in TERMINAL and not more)


async def read_log_tail(
    svc: Services, caller: Caller, agent_id: str, *, tail: int, stream: str | None = None
) -> LogPage:
    """The agent's last `tail` lines (of one stream, if given) as one page: `next_cursor` is the
    last seq (follow on from there), `complete` once the agent is terminal. Past MAX_PAGE_BYTES
    only the newest lines that fit are in it."""
    row = await load_agent(svc, caller, agent_id)
    stream_no = {"stdout": STDOUT, "stderr": STDERR}.get(stream or "")
    rows = await svc.store.run(
        queries.read_last_log_lines, agent_pk=row.pk, count=tail, stream=stream_no, max_bytes=MAX_PAGE_BYTES
    )
    last = rows[-1][0] if rows else await svc.store.run(queries.last_log_seq, agent_pk=row.pk)
    next_cursor = str(last)
    return LogPage(lines=log_lines(rows), next_cursor=next_cursor, complete=row.status in TERMINAL)


async def tail_start(svc: Services, row: AgentRow, tail: int) -> int:
    """The seq after which the last `tail` lines of the agent start."""
    last = await svc.store.run(queries.last_log_seq, agent_pk=row.pk)
    return max(0, last - tail)


async def read_tail(svc: Services, caller: Caller, agent_id: str, tail: int) -> list[LogLine]:
    """The agent's last `tail` lines, oldest first."""
    row = await load_agent(svc, caller, agent_id)
    rows = await svc.store.run(queries.read_last_log_lines, agent_pk=row.pk, count=tail, max_bytes=MAX_PAGE_BYTES)
    return log_lines(rows)
