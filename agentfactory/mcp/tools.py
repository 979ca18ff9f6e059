"""What each MCP tool does, as the caller's key, through the HTTP routes' own functions.

A tool is an input model (its JSON schema is the tool's inputSchema, and `model_validate` is its
validation), an output model (its outputSchema) and a coroutine. The coroutines call the route
functions of `agentfactory.api.routes` directly, with the MCP request's `Caller`: the same key
filtering (`load_agent`), catalog and quota checks (`Launcher`), views and paging as HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from agentfactory.api.deps import AppContext, load_agent
from agentfactory.api.routes import agents, logs, system
from agentfactory.catalog import Catalog
from agentfactory.errors import NotFoundError
from agentfactory.keys import Caller
from agentfactory.schemas import AgentCreate, AgentOut, AgentResult, LogLine, LogPage, TtlUpdate
from agentfactory.store import queries
from agentfactory.store.tables import TERMINAL

MAX_WAIT_SECONDS = 300
MAX_LOG_PAGE = 1000
MAX_TAIL = 200
# Lines are up to 64 KiB each, so a page or tail is also bounded in bytes: for a model's context,
# and because a tool result carries it twice (text and structured content), inside one SSE event
# that MCP clients cap (the SDK's default: 1 MiB).
MAX_PAGE_JSON_BYTES = 196_608
# A wait re-reads the agent on each hub wake-up (status change or new lines) and at least this
# often, so an agent finished by another replica (no local wake-up) is seen too.
WAIT_POLL_SECONDS = 2.0
WAIT_MIN_READ_INTERVAL = 0.1


class NoArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1, description="an agent id (ag_...) from launch_agent")


class LaunchAgent(AgentCreate):
    # AgentCreate (the POST /agents body) without `secrets`, plus the Idempotency-Key header.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "echo", "tools": [], "prompt": "say hi", "ttl_seconds": 120, "metadata": {"from": "mcp"}}
            ]
        },
    )

    # A secret passed as a tool argument goes through the model's context and the host's
    # transcript: over MCP it is refused, and absent from the schema. The HTTP API takes them.
    secrets: SkipJsonSchema[dict[str, str]] = Field(default_factory=dict)
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="a retry with the same key and arguments returns the same agent"
    )

    @field_validator("secrets")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        if v:
            raise ValueError("secrets are not accepted over MCP (they would pass through the model); use the HTTP API")
        return v

    def to_request(self) -> AgentCreate:
        return AgentCreate.model_validate(self.model_dump(exclude={"idempotency_key"}))


class ReadLogs(AgentRef):
    cursor: str | None = Field(None, max_length=20, description="next_cursor of the previous page (a line seq)")
    limit: int = Field(200, ge=1, le=MAX_LOG_PAGE, description="lines per page")
    stream: Literal["stdout", "stderr"] | None = Field(None, description="only this stream")


class WaitAgent(AgentRef):
    timeout_seconds: int = Field(60, ge=0, le=MAX_WAIT_SECONDS, description="how long to wait for the end")
    tail: int = Field(20, ge=0, le=MAX_TAIL, description="how many of the last log lines to return")


class ExtendTtl(TtlUpdate, AgentRef):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"agent_id": "ag_5x2kq7m3b9w4t6", "ttl_seconds": 600}]}
    )


class WaitResult(BaseModel):
    done: bool = Field(description="true when the agent reached a terminal status within the wait")
    result: AgentResult
    tail: list[LogLine] = Field(description="the agent's last log lines, oldest first")


FIELD_HELP = {
    "model": "a model id from list_catalog",
    "prompt": "the task for the agent",
    "tools": "tool ids from list_catalog (python, shell, ...); only a tool with network=true gives the agent a network",
    "ttl_seconds": "seconds the agent may live (from its start, or from now for extend_ttl); "
    "default and maximum in list_catalog's limits",
    "env": "environment variables for the agent",
    "metadata": "free key/value labels stored with the agent",
    "token_budget": "most model tokens the agent may spend",
}


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, with a description on each argument an LLM has to fill."""
    schema = model.model_json_schema()
    for name, prop in schema.get("properties", {}).items():
        if name in FIELD_HELP and "description" not in prop:
            prop["description"] = FIELD_HELP[name]
    return schema


Handler = Callable[[AppContext, Caller, Any], Awaitable[BaseModel | dict[str, Any]]]


@dataclass(frozen=True)
class ToolDef:
    name: str
    title: str
    description: str
    input: type[BaseModel]
    output: type[BaseModel]
    run: Handler
    read_only: bool = False
    destructive: bool = False


async def list_catalog(ctx: AppContext, caller: Caller, _args: NoArguments) -> dict[str, Any]:
    return await system.catalog(_caller=caller, ctx=ctx)


async def launch_agent(ctx: AppContext, caller: Caller, args: LaunchAgent) -> AgentOut:
    return await agents.create_agent(
        body=args.to_request(), response=Response(), idempotency_key=args.idempotency_key, caller=caller, ctx=ctx
    )


async def get_agent(ctx: AppContext, caller: Caller, args: AgentRef) -> AgentOut:
    return await agents.get_agent(agent_id=args.agent_id, caller=caller, ctx=ctx)


def _within_bytes(lines: list[dict[str, Any]], *, newest: bool = False) -> list[dict[str, Any]]:
    """The first (or, with `newest`, the last) lines whose JSON fits MAX_PAGE_JSON_BYTES; at least one."""
    ordered = reversed(lines) if newest else iter(lines)
    kept: list[dict[str, Any]] = []
    total = 0
    for line in ordered:
        total += len(json.dumps(line)) + 1
        if kept and total > MAX_PAGE_JSON_BYTES:
            break
        kept.append(line)
    return kept[::-1] if newest else kept


async def read_logs(ctx: AppContext, caller: Caller, args: ReadLogs) -> dict[str, Any]:
    """GET /agents/{id}/logs; a page over MAX_PAGE_JSON_BYTES ends early (its next_cursor says where)."""
    page = await logs.get_logs(
        agent_id=args.agent_id, cursor=args.cursor, limit=args.limit, stream=args.stream, caller=caller, ctx=ctx
    )
    kept = _within_bytes(page["lines"])
    if len(kept) < len(page["lines"]):
        page = {"lines": kept, "next_cursor": str(kept[-1]["seq"]), "complete": False}
    return page


async def cancel_agent(ctx: AppContext, caller: Caller, args: AgentRef) -> AgentOut:
    return await agents.cancel_agent(agent_id=args.agent_id, caller=caller, ctx=ctx)


async def extend_ttl(ctx: AppContext, caller: Caller, args: ExtendTtl) -> AgentOut:
    body = TtlUpdate(ttl_seconds=args.ttl_seconds)
    return await agents.extend_ttl(agent_id=args.agent_id, body=body, caller=caller, ctx=ctx)


async def wait_agent(ctx: AppContext, caller: Caller, args: WaitAgent) -> WaitResult:
    """A wait holds one of the key's `max_streams` leases (429 past it; E_AUTH if the key is revoked)."""
    with ctx.streams.hold(caller):
        return await _wait_agent(ctx, caller, args)


async def _wait_agent(ctx: AppContext, caller: Caller, args: WaitAgent) -> WaitResult:
    """Wait on the hub (woken by status changes and new lines), re-reading the row, until the agent
    is terminal or the timeout passes; then the result document and the last lines."""
    assert ctx.hub is not None
    row = await load_agent(ctx, caller, args.agent_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout_seconds
    while row.status not in TERMINAL:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        wake = ctx.hub.subscribe(row.pk)
        fresh = await ctx.run_db(queries.get_agent_by_pk, pk=row.pk)
        if fresh is None:
            wake.cancel()
            raise NotFoundError(f"no agent {args.agent_id!r}")
        row = fresh
        if row.status in TERMINAL:
            wake.cancel()
            break
        await ctx.hub.wait(row.pk, min(remaining, WAIT_POLL_SECONDS), wake)
        await asyncio.sleep(min(WAIT_MIN_READ_INTERVAL, max(0.0, deadline - loop.time())))
    result = await agents.get_result(agent_id=row.id, caller=caller, ctx=ctx)
    tail: list[LogLine] = []
    if args.tail:
        last = await ctx.run_db(queries.last_log_seq, agent_pk=row.pk)
        page = await logs.get_logs(
            agent_id=row.id, cursor=str(max(0, last - args.tail)), limit=args.tail, stream=None, caller=caller, ctx=ctx
        )
        tail = [LogLine.model_validate(line) for line in _within_bytes(page["lines"], newest=True)]
    return WaitResult(done=result.status in TERMINAL, result=result, tail=tail)


TOOLS: tuple[ToolDef, ...] = (
    ToolDef(
        "list_catalog", "List the catalog",
        "The models and tools an agent may use, and the limits (default and maximum TTL, memory, CPU, "
        "token budget). Call it first to pick a model.",
        NoArguments, Catalog, list_catalog, read_only=True,
    ),
    ToolDef(
        "launch_agent", "Launch an agent",
        "Start a sandboxed agent: its own container running `model` on `prompt` with the chosen `tools`, "
        "killed when its TTL runs out. Returns the agent (id, status); then call wait_agent or read_logs.",
        LaunchAgent, AgentOut, launch_agent,
    ),
    ToolDef(
        "get_agent", "Get an agent", "An agent's current status, timings and, once finished, its log seal.",
        AgentRef, AgentOut, get_agent, read_only=True,
    ),
    ToolDef(
        "read_logs", "Read an agent's output",
        "One page (at most `limit` lines and about 192 KiB) of the lines the agent printed, oldest "
        "first. Pass next_cursor back as cursor for the next page; complete=true once the agent has "
        "finished and the page reaches its last line.",
        ReadLogs, LogPage, read_logs, read_only=True,
    ),
    ToolDef(
        "wait_agent", "Wait for an agent to finish",
        f"Wait up to timeout_seconds (at most {MAX_WAIT_SECONDS}) for the agent to reach a terminal status "
        "(succeeded, failed, cancelled, expired). Returns done, the result document (status, exit code, "
        "timings, token usage, log seal) and the last log lines. Call again if done is false.",
        WaitAgent, WaitResult, wait_agent, read_only=True,
    ),
    ToolDef(
        "cancel_agent", "Cancel an agent",
        "Stop the agent now (status cancelled). On an agent already finished: its final state, unchanged.",
        AgentRef, AgentOut, cancel_agent, destructive=True,
    ),
    ToolDef(
        "extend_ttl", "Extend an agent's TTL",
        "A running agent's expires_at becomes now + ttl_seconds (within the maximum TTL).",
        ExtendTtl, AgentOut, extend_ttl,
    ),
)  # fmt: skip
