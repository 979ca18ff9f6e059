"""What the SDK's two clients (`sdk.AgentFactory`, `sdk.AsyncAgentFactory`) share: the events `follow()`
yields, the options of a new agent, and how a request body and a page size are made from them."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from agentfactory.client import MAX_LOG_PAGE, RetryPolicy
from agentfactory.follow import End, Line, Status
from agentfactory.schemas import AgentCreate, AgentOut, LogLine

Agent = AgentOut
"""An agent as `GET /agents/{id}` shows it (`schemas.AgentOut`)."""

RETRY = RetryPolicy(retries=3, statuses=frozenset({429, 502, 503, 504}), backoff=0.5)
DEFAULT_TIMEOUT = 30.0
PAGE = 500  # agents a list request asks for at most


class AgentOptions(TypedDict, total=False):
    """What `create()` and `run()` take besides the model and the prompt (SPEC §3 `POST /agents`)."""

    tools: builtins.list[str]
    ttl_seconds: int
    env: Mapping[str, str]
    secrets: Mapping[str, str]
    metadata: Mapping[str, str | int | float | bool | None]
    token_budget: int
    queue_timeout_seconds: int
    workspace: str
    artifacts: builtins.list[str]
    idempotency_key: str


@dataclass(frozen=True)
class LogEvent:
    """One captured line of the agent's output."""

    line: LogLine
    kind: Literal["log"] = "log"


@dataclass(frozen=True)
class StatusEvent:
    """The agent changed status (pending → starting → running → terminal)."""

    agent: Agent
    kind: Literal["status"] = "status"


@dataclass(frozen=True)
class EndEvent:
    """The agent is terminal and every line was delivered: always the last event of `follow()`."""

    agent: Agent
    kind: Literal["end"] = "end"


FollowEvent = LogEvent | StatusEvent | EndEvent


def follow_event(step: Line | Status | End) -> FollowEvent:
    if isinstance(step, Line):
        return LogEvent(LogLine.model_validate(step.line))
    if isinstance(step, Status):
        return StatusEvent(Agent.model_validate(step.agent))
    return EndEvent(Agent.model_validate(step.agent))


def create_request(model: str, prompt: str, options: AgentOptions) -> tuple[dict[str, Any], str]:
    """The request body, checked here first (`pydantic.ValidationError` before anything is sent),
    and its Idempotency-Key (a fresh one when the caller gave none)."""
    fields = {k: v for k, v in options.items() if k != "idempotency_key"}
    for name in ("env", "secrets", "metadata"):
        if name in fields:
            fields[name] = dict(fields[name])  # type: ignore[call-overload]
    body = AgentCreate.model_validate({"model": model, "prompt": prompt, **fields})
    sent = body.model_dump(exclude_none=True)
    if not sent["queue_timeout_seconds"]:  # the default: a server from before the queue accepts the body
        del sent["queue_timeout_seconds"]
    return sent, options.get("idempotency_key") or f"sdk-{uuid.uuid4()}"


def page_size(limit: int | None, have: int) -> int | None:
    """How many agents the next list request asks for; None once `limit` agents are had."""
    if limit is None:
        return PAGE
    return min(PAGE, limit - have) if have < limit else None


def check_tail(tail: int, after: int | None) -> None:
    if tail > MAX_LOG_PAGE or after is not None:
        raise ValueError(f"tail is at most {MAX_LOG_PAGE} and excludes after")
