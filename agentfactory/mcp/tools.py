"""What each MCP tool does, as the caller's key, through the service layer.

A tool is an input model (its JSON schema is the tool's inputSchema, and `model_validate` is its
validation), an output model (its outputSchema) and a coroutine. The coroutines call the use cases
of `agentfactory.service` with the MCP request's `Caller`: the same key filtering, catalog and quota
checks, views and paging as HTTP, which is another adapter over the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from agentfactory.catalog import Catalog
from agentfactory.errors import SchemaError
from agentfactory.schemas import AgentCreate, AgentOut, AgentResult, LogLine, LogPage, TtlUpdate
from agentfactory.service import agents, files, streams, system
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services
from agentfactory.vocabulary import TERMINAL

MAX_WAIT_SECONDS = 300
MAX_LOG_PAGE = 1000
MAX_TAIL = 200
MAX_ARTIFACT_READ = 131_072  # bytes read_artifact returns at most (text in the model's context)
# Lines are up to 64 KiB each, so a page or tail is also bounded in bytes: for a model's context,
# and because a tool result carries it twice (text and structured content), inside one SSE event
# that MCP clients cap (the SDK's default: 1 MiB).
MAX_PAGE_JSON_BYTES = 196_608


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
    "artifacts": "glob patterns (relative to the agent's working directory /scratch/workspace, `**` crosses "
    "directories) of files to hand back when the agent ends; read them with read_artifact",
    "workspace": "an upload id (up_..., from POST /uploads) unpacked into the agent's working directory",
}


class ReadArtifact(AgentRef):
    path: str = Field(min_length=1, max_length=4096, description="an artifact's path, as get_agent's result lists it")
    max_bytes: int = Field(16_384, ge=1, le=MAX_ARTIFACT_READ, description="read at most this many bytes")


class ArtifactText(BaseModel):
    path: str
    bytes: int = Field(description="the artifact's whole size")
    sha256: str
    text: str = Field(description="its first max_bytes bytes as UTF-8 (undecodable bytes replaced)")
    truncated: bool


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, with a description on each argument an LLM has to fill."""
    schema = model.model_json_schema()
    for name, prop in schema.get("properties", {}).items():
        if name in FIELD_HELP and "description" not in prop:
            prop["description"] = FIELD_HELP[name]
    return schema


Handler = Callable[[Services, Caller, Any], Awaitable[BaseModel | dict[str, Any]]]


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


async def list_catalog(svc: Services, caller: Caller, _args: NoArguments) -> dict[str, Any]:
    return system.catalog(svc)


async def launch_agent(svc: Services, caller: Caller, args: LaunchAgent) -> AgentOut:
    agent, _replayed = await agents.create_agent(svc, caller, args.to_request(), idempotency_key=args.idempotency_key)
    return agent


async def get_agent(svc: Services, caller: Caller, args: AgentRef) -> AgentOut:
    return await agents.get_agent(svc, caller, args.agent_id)


def _within_bytes(lines: list[LogLine], *, newest: bool = False) -> list[LogLine]:
    """The first (or, with `newest`, the last) lines whose JSON fits MAX_PAGE_JSON_BYTES; at least one."""
    ordered = reversed(lines) if newest else iter(lines)
    kept: list[LogLine] = []
    total = 0
    for line in ordered:
        total += len(json.dumps(line.model_dump())) + 1
        if kept and total > MAX_PAGE_JSON_BYTES:
            break
        kept.append(line)
    return kept[::-1] if newest else kept


async def read_logs(svc: Services, caller: Caller, args: ReadLogs) -> LogPage:
    """A page of the agent's output; a page over MAX_PAGE_JSON_BYTES ends early (its next_cursor says where)."""
    after = 0
    if args.cursor:
        if not args.cursor.isascii() or not args.cursor.isdigit():
            raise SchemaError("cursor must be a log line seq (a non-negative integer)")
        after = int(args.cursor)
    page = await agents.read_logs(svc, caller, args.agent_id, after=after, limit=args.limit, stream=args.stream)
    kept = _within_bytes(page.lines)
    if len(kept) < len(page.lines):
        page = LogPage(lines=kept, next_cursor=str(kept[-1].seq), complete=False)
    return page


async def cancel_agent(svc: Services, caller: Caller, args: AgentRef) -> AgentOut:
    return await agents.cancel_agent(svc, caller, args.agent_id)


async def extend_ttl(svc: Services, caller: Caller, args: ExtendTtl) -> AgentOut:
    return await agents.extend_ttl(svc, caller, args.agent_id, args.ttl_seconds)


async def read_artifact(svc: Services, caller: Caller, args: ReadArtifact) -> ArtifactText:
    """The first max_bytes of one artifact, as text (SPEC §9)."""
    art, data = await files.read_head(svc, caller, args.agent_id, args.path, args.max_bytes)
    text = data.decode("utf-8", "replace")
    return ArtifactText(path=art.path, bytes=art.size, sha256=art.sha256, text=text, truncated=len(data) < art.size)


async def wait_agent(svc: Services, caller: Caller, args: WaitAgent) -> WaitResult:
    """Wait for the agent's end (the service's hub loop), then the result document and the last lines.
    The wait holds one of the key's max_streams leases (429 past it; E_AUTH if the key is revoked)."""
    row = await agents.load_agent(svc, caller, args.agent_id)
    with svc.streams.hold(caller):
        row = await streams.wait_until_done(svc, row, args.timeout_seconds)
    result = await agents.result_of(svc, row)
    tail: list[LogLine] = []
    if args.tail:
        tail = _within_bytes(await agents.read_tail(svc, caller, row.id, args.tail), newest=True)
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
        "killed when its TTL runs out. Returns the agent (id, status); then call wait_agent or read_logs. "
        "When the key's or the server's limit of running agents is full, set queue_timeout_seconds to wait in "
        "the queue (status `queued`, with queue_position and estimated_start_at) instead of an E_QUOTA / "
        "E_CAPACITY error.",
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
        "read_artifact", "Read an agent's artifact",
        f"The first max_bytes (at most {MAX_ARTIFACT_READ}) of a file the agent handed back (launch_agent's "
        "artifacts), as text. get_agent's result (wait_agent) lists them with their sizes and sha256.",
        ReadArtifact, ArtifactText, read_artifact, read_only=True,
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
