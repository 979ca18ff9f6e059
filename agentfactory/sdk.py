"""The Python SDK: `AgentFactory` (blocking) and `AsyncAgentFactory` (asyncio), docs/sdk.md.

    from agentfactory import AgentFactory

    with AgentFactory() as af:  # AGENTFACTORY_URL / AGENTFACTORY_API_KEY, or the config's context
        result = af.run(model="echo", prompt="say hi", on_line=lambda line: print(line.text))
        print(result.status, result.exit_code)

Answers are the server's own wire models (`agentfactory.schemas`): `Agent`, `AgentResult`, `LogLine`,
`KeyOut`. Failures raise `ApiError` (the error envelope: `.code`, `.status`, `.message`),
`ServerUnreachable` or `WaitTimeout`, all `ClientError`s. Idempotent calls (reads, cancel, extend,
and create, which sends an Idempotency-Key of its own) are retried on connection failures, 429, 502,
503 and 504. This module and everything it imports need only httpx and pydantic.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agentfactory import contexts
from agentfactory.async_client import AsyncAgentFollower, AsyncApiClient
from agentfactory.client import MAX_LOG_PAGE, AgentFollower, ApiClient, RetryPolicy
from agentfactory.client_errors import ApiError, ClientError, ServerUnreachable, WaitTimeout
from agentfactory.follow import End, Line, Status
from agentfactory.schemas import AgentCreate, AgentOut, AgentResult, KeyCreate, KeyCreated, KeyOut, LogLine

__all__ = [
    "Agent",
    "AgentFactory",
    "AgentResult",
    "ApiError",
    "AsyncAgentFactory",
    "ClientError",
    "EndEvent",
    "FollowEvent",
    "KeyCreated",
    "KeyOut",
    "LogEvent",
    "LogLine",
    "ServerUnreachable",
    "StatusEvent",
    "WaitTimeout",
]

Agent = AgentOut
"""An agent as `GET /agents/{id}` shows it (`schemas.AgentOut`)."""

RETRY = RetryPolicy(retries=3, statuses=frozenset({429, 502, 503, 504}), backoff=0.5)
DEFAULT_TIMEOUT = 30.0


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


def _event(step: Line | Status | End) -> FollowEvent:
    if isinstance(step, Line):
        return LogEvent(LogLine.model_validate(step.line))
    if isinstance(step, Status):
        return StatusEvent(Agent.model_validate(step.agent))
    return EndEvent(Agent.model_validate(step.agent))


def _create_body(
    *,
    model: str,
    prompt: str,
    tools: builtins.list[str] | None,
    ttl_seconds: int | None,
    env: Mapping[str, str] | None,
    secrets: Mapping[str, str] | None,
    metadata: Mapping[str, str | int | float | bool | None] | None,
    token_budget: int | None,
) -> dict[str, Any]:
    """The request body, checked here first (`pydantic.ValidationError` before anything is sent)."""
    body = AgentCreate(
        model=model,
        prompt=prompt,
        tools=list(tools or []),
        ttl_seconds=ttl_seconds,
        env=dict(env or {}),
        secrets=dict(secrets or {}),
        metadata=dict(metadata or {}),
        token_budget=token_budget,
    )
    return body.model_dump(exclude_none=True)


def _where(url: str | None, api_key: str | None, context: str | None) -> contexts.Context:
    return contexts.resolve(url, api_key, context=context)


class AgentFactory:
    """A blocking client of one agentfactory server. Use it as a context manager, or `close()` it.

    `url` and `api_key` default to `AGENTFACTORY_URL` / `AGENTFACTORY_API_KEY`, then to the
    `context` (or the current one) of `~/.config/agentfactory/config.toml`, then to
    `http://127.0.0.1:8000` without a key. `timeout` bounds each request (not a follow).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        context: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RETRY,
    ):
        where = _where(url, api_key, context)
        self.url = where.url
        self._api = ApiClient(where.url, where.api_key, timeout=timeout, retries=retry)

    def __enter__(self) -> AgentFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._api.close()

    # --- agents ------------------------------------------------------------------------------------

    def create(
        self,
        *,
        model: str,
        prompt: str,
        tools: builtins.list[str] | None = None,
        ttl_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        metadata: Mapping[str, str | int | float | bool | None] | None = None,
        token_budget: int | None = None,
        idempotency_key: str | None = None,
    ) -> Agent:
        """Launches an agent and returns it (usually `starting` or `running`).

        Safe to retry: the request carries `idempotency_key` (a fresh one when not given), so a
        repeated request returns the same agent instead of launching a second one.
        """
        body = _create_body(
            model=model, prompt=prompt, tools=tools, ttl_seconds=ttl_seconds, env=env, secrets=secrets,
            metadata=metadata, token_budget=token_budget,
        )  # fmt: skip
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        return Agent.model_validate(self._api.create_agent(body, idempotency_key=key))

    def get(self, agent_id: str) -> Agent:
        """One agent, as it is now."""
        return Agent.model_validate(self._api.get_agent(agent_id))

    def list(
        self,
        *,
        status: str | None = None,
        metadata: Mapping[str, str | int | float | bool | None] | None = None,
        limit: int | None = 100,
    ) -> builtins.list[Agent]:
        """Your agents, newest first, following pages up to `limit` agents (None: all of them).

        `metadata` selects agents whose metadata has every one of these key/value pairs
        (compared as text: `{"ci_run": 42}` and `{"ci_run": "42"}` select the same agents).
        """
        agents: builtins.list[Agent] = []
        cursor: str | None = None
        while limit is None or len(agents) < limit:
            size = 500 if limit is None else min(500, limit - len(agents))
            page = self._api.list_agents(status=status, limit=size, cursor=cursor, metadata=metadata)
            agents += [Agent.model_validate(a) for a in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return agents

    def cancel(self, agent_id: str) -> Agent:
        """Stops the agent now (status `cancelled`); a finished agent is returned as it is."""
        return Agent.model_validate(self._api.delete_agent(agent_id))

    def extend(self, agent_id: str, ttl_seconds: int) -> Agent:
        """A running agent's new time to live: it expires `ttl_seconds` from now."""
        return Agent.model_validate(self._api.set_ttl(agent_id, ttl_seconds))

    def result(self, agent_id: str) -> AgentResult:
        """The result document: status, reason, exit code, timings, tokens, resources, the log seal."""
        return AgentResult.model_validate(self._api.get_result(agent_id))

    def wait(self, agent_id: str, *, timeout: float | None = None) -> Agent:
        """Blocks until the agent is terminal and returns it; `WaitTimeout` after `timeout` seconds."""
        return Agent.model_validate(self._api.wait_agent(agent_id, timeout=timeout))

    def logs(
        self,
        agent_id: str,
        *,
        tail: int | None = None,
        after: int | None = None,
        stream: Literal["stdout", "stderr"] | None = None,
    ) -> builtins.list[LogLine]:
        """The captured lines so far: all of them (page by page), those after seq `after`, or the
        last `tail` (up to 5000, in one request)."""
        if tail is not None:
            if tail > MAX_LOG_PAGE or after is not None:
                raise ValueError(f"tail is at most {MAX_LOG_PAGE} and excludes after")
            page = self._api.get_logs(agent_id, tail=tail, stream=stream)
            return [LogLine.model_validate(line) for line in page["lines"]]
        return [LogLine.model_validate(line) for line in self._api.iter_logs(agent_id, after=after, stream=stream)]

    def follow(self, agent_id: str, *, after: int | None = None, tail: int | None = None) -> Iterator[FollowEvent]:
        """The agent's live stream: `LogEvent`s and `StatusEvent`s, then one `EndEvent`.

        Each line comes exactly once and in order. A dropped connection is resumed with
        `Last-Event-ID` (lines the stream skipped are fetched from the logs pages); after 60 s
        without reaching the server, `ServerUnreachable`. Start after seq `after` (to resume in a
        new process), or with the last `tail` lines.
        """
        follower = AgentFollower(self._api, agent_id, after=after, tail=tail)
        for step in follower.events():
            yield _event(step)

    def run(
        self,
        *,
        model: str,
        prompt: str,
        tools: builtins.list[str] | None = None,
        ttl_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        metadata: Mapping[str, str | int | float | bool | None] | None = None,
        token_budget: int | None = None,
        idempotency_key: str | None = None,
        on_line: Callable[[LogLine], None] | None = None,
    ) -> AgentResult:
        """Launches an agent, streams its output to `on_line` until it ends, returns its result.

        Ctrl-C (KeyboardInterrupt) cancels the agent before the exception goes on.
        """
        agent = self.create(
            model=model, prompt=prompt, tools=tools, ttl_seconds=ttl_seconds, env=env, secrets=secrets,
            metadata=metadata, token_budget=token_budget, idempotency_key=idempotency_key,
        )  # fmt: skip
        try:
            for event in self.follow(agent.id):
                if isinstance(event, LogEvent) and on_line is not None:
                    on_line(event.line)
        except KeyboardInterrupt:
            self._cancel_quietly(agent.id)
            raise
        return self.result(agent.id)

    def _cancel_quietly(self, agent_id: str) -> None:
        with contextlib.suppress(ClientError):
            self._api.delete_agent(agent_id)

    # --- the rest ----------------------------------------------------------------------------------

    def catalog(self) -> dict[str, Any]:
        """The models and tools this server offers, and its limits (`catalog.json`, SPEC §2)."""
        doc: dict[str, Any] = self._api.get_catalog()
        return doc

    def create_key(self, name: str, **limits: Any) -> KeyCreated:
        """An API key (admin only): `admin`, `models`, `tools`, `max_concurrent_agents`,
        `max_requests_per_minute`, `max_ttl_seconds`. Its secret `.key` is shown this once."""
        body = KeyCreate(name=name, **limits).model_dump()
        return KeyCreated.model_validate(self._api.create_key(body))

    def list_keys(self) -> builtins.list[KeyOut]:
        return [KeyOut.model_validate(k) for k in self._api.list_keys()["items"]]

    def revoke_key(self, key_id: str) -> KeyOut:
        return KeyOut.model_validate(self._api.revoke_key(key_id))


class AsyncAgentFactory:
    """`AgentFactory` for asyncio: the same methods, awaited (`follow` is an async iterator).

    async with AsyncAgentFactory() as af:
        result = await af.run(model="echo", prompt="say hi")
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        context: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RETRY,
    ):
        where = _where(url, api_key, context)
        self.url = where.url
        self._api = AsyncApiClient(where.url, where.api_key, timeout=timeout, retries=retry)

    async def __aenter__(self) -> AsyncAgentFactory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()

    async def create(
        self,
        *,
        model: str,
        prompt: str,
        tools: builtins.list[str] | None = None,
        ttl_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        metadata: Mapping[str, str | int | float | bool | None] | None = None,
        token_budget: int | None = None,
        idempotency_key: str | None = None,
    ) -> Agent:
        """See `AgentFactory.create`."""
        body = _create_body(
            model=model, prompt=prompt, tools=tools, ttl_seconds=ttl_seconds, env=env, secrets=secrets,
            metadata=metadata, token_budget=token_budget,
        )  # fmt: skip
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        return Agent.model_validate(await self._api.create_agent(body, idempotency_key=key))

    async def get(self, agent_id: str) -> Agent:
        return Agent.model_validate(await self._api.get_agent(agent_id))

    async def list(
        self,
        *,
        status: str | None = None,
        metadata: Mapping[str, str | int | float | bool | None] | None = None,
        limit: int | None = 100,
    ) -> builtins.list[Agent]:
        """See `AgentFactory.list`."""
        agents: builtins.list[Agent] = []
        cursor: str | None = None
        while limit is None or len(agents) < limit:
            size = 500 if limit is None else min(500, limit - len(agents))
            page = await self._api.list_agents(status=status, limit=size, cursor=cursor, metadata=metadata)
            agents += [Agent.model_validate(a) for a in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return agents

    async def cancel(self, agent_id: str) -> Agent:
        return Agent.model_validate(await self._api.delete_agent(agent_id))

    async def extend(self, agent_id: str, ttl_seconds: int) -> Agent:
        return Agent.model_validate(await self._api.set_ttl(agent_id, ttl_seconds))

    async def result(self, agent_id: str) -> AgentResult:
        return AgentResult.model_validate(await self._api.get_result(agent_id))

    async def wait(self, agent_id: str, *, timeout: float | None = None) -> Agent:
        return Agent.model_validate(await self._api.wait_agent(agent_id, timeout=timeout))

    async def logs(
        self,
        agent_id: str,
        *,
        tail: int | None = None,
        after: int | None = None,
        stream: Literal["stdout", "stderr"] | None = None,
    ) -> builtins.list[LogLine]:
        """See `AgentFactory.logs`."""
        if tail is not None:
            if tail > MAX_LOG_PAGE or after is not None:
                raise ValueError(f"tail is at most {MAX_LOG_PAGE} and excludes after")
            page = await self._api.get_logs(agent_id, tail=tail, stream=stream)
            return [LogLine.model_validate(line) for line in page["lines"]]
        lines = self._api.iter_logs(agent_id, after=after, stream=stream)
        return [LogLine.model_validate(line) async for line in lines]

    async def follow(
        self, agent_id: str, *, after: int | None = None, tail: int | None = None
    ) -> AsyncIterator[FollowEvent]:
        """See `AgentFactory.follow`: `async for event in af.follow(agent_id): ...`."""
        follower = AsyncAgentFollower(self._api, agent_id, after=after, tail=tail)
        async for step in follower.events():
            yield _event(step)

    async def run(
        self,
        *,
        model: str,
        prompt: str,
        tools: builtins.list[str] | None = None,
        ttl_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        metadata: Mapping[str, str | int | float | bool | None] | None = None,
        token_budget: int | None = None,
        idempotency_key: str | None = None,
        on_line: Callable[[LogLine], None] | None = None,
    ) -> AgentResult:
        """See `AgentFactory.run`; cancelling the awaiting task cancels the agent."""
        agent = await self.create(
            model=model, prompt=prompt, tools=tools, ttl_seconds=ttl_seconds, env=env, secrets=secrets,
            metadata=metadata, token_budget=token_budget, idempotency_key=idempotency_key,
        )  # fmt: skip
        try:
            async for event in self.follow(agent.id):
                if isinstance(event, LogEvent) and on_line is not None:
                    on_line(event.line)
        except (asyncio.CancelledError, KeyboardInterrupt):
            await asyncio.shield(self._cancel_quietly(agent.id))
            raise
        return await self.result(agent.id)

    async def _cancel_quietly(self, agent_id: str) -> None:
        with contextlib.suppress(ClientError):
            await self._api.delete_agent(agent_id)

    async def catalog(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self._api.get_catalog()
        return doc

    async def create_key(self, name: str, **limits: Any) -> KeyCreated:
        body = KeyCreate(name=name, **limits).model_dump()
        return KeyCreated.model_validate(await self._api.create_key(body))

    async def list_keys(self) -> builtins.list[KeyOut]:
        return [KeyOut.model_validate(k) for k in (await self._api.list_keys())["items"]]

    async def revoke_key(self, key_id: str) -> KeyOut:
        return KeyOut.model_validate(await self._api.revoke_key(key_id))
