"""The Python SDK: `AgentFactory` (blocking) and `AsyncAgentFactory` (asyncio), docs/sdk.md.

    from agentfactory import AgentFactory

    with AgentFactory() as af:  # AGENTFACTORY_URL / AGENTFACTORY_API_KEY, or the config's context
        result = af.run(model="echo", prompt="say hi", on_line=lambda line: print(line.text))
        print(result.status, result.exit_code)

Answers are the server's own wire models (`agentfactory.schemas`): `Agent`, `AgentResult`, `LogLine`,
`KeyOut`, `UploadOut`, `ArtifactManifest`, `EventOut`. Failures raise `ApiError` (the error envelope:
`.code`, `.status`, `.message`), `ServerUnreachable`, `WaitTimeout` or `ArtifactMismatch`, all
`ClientError`s. Idempotent calls (reads, cancel, extend,
and create, which sends an Idempotency-Key of its own) are retried on connection failures, 429, 502,
503 and 504. This module and everything it imports need only httpx and pydantic.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Literal, Unpack

from agentfactory import contexts
from agentfactory.async_client import AsyncAgentFollower, AsyncApiClient
from agentfactory.client import AgentFollower, ApiClient, RetryPolicy
from agentfactory.client_errors import ApiError, ClientError, ServerUnreachable, WaitTimeout
from agentfactory.schemas import (
    AgentResult,
    ArtifactManifest,
    EventOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    LogLine,
    UploadOut,
)
from agentfactory.sdk_events import (
    DEFAULT_TIMEOUT,
    RETRY,
    Agent,
    AgentOptions,
    EndEvent,
    FollowEvent,
    LogEvent,
    StatusEvent,
    check_tail,
    create_request,
    follow_event,
    page_size,
)
from agentfactory.sdk_files import AsyncFilesAndEvents, FilesAndEvents
from agentfactory.workspace import ArtifactMismatch

__all__ = [
    "Agent",
    "AgentFactory",
    "AgentResult",
    "ApiError",
    "ArtifactManifest",
    "ArtifactMismatch",
    "AsyncAgentFactory",
    "ClientError",
    "EndEvent",
    "EventOut",
    "FollowEvent",
    "KeyCreated",
    "KeyOut",
    "LogEvent",
    "LogLine",
    "ServerUnreachable",
    "StatusEvent",
    "UploadOut",
    "WaitTimeout",
]


def _where(url: str | None, api_key: str | None, context: str | None) -> contexts.Context:
    return contexts.resolve(url, api_key, context=context)


class AgentFactory(FilesAndEvents):
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
        **options: Unpack[AgentOptions],
    ) -> Agent:
        """Launches an agent and returns it (usually `starting` or `running`).

        Safe to retry: the request carries `idempotency_key` (a fresh one when not given), so a
        repeated request returns the same agent instead of launching a second one.
        """
        body, key = create_request(model, prompt, options)
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
        while (size := page_size(limit, len(agents))) is not None:
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
            check_tail(tail, after)
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
            yield follow_event(step)

    def run(
        self,
        *,
        model: str,
        prompt: str,
        on_line: Callable[[LogLine], None] | None = None,
        **options: Unpack[AgentOptions],
    ) -> AgentResult:
        """Launches an agent, streams its output to `on_line` until it ends, returns its result.

        Ctrl-C (KeyboardInterrupt) cancels the agent before the exception goes on.
        """
        agent = self.create(model=model, prompt=prompt, **options)
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


class AsyncAgentFactory(AsyncFilesAndEvents):
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
        **options: Unpack[AgentOptions],
    ) -> Agent:
        """See `AgentFactory.create`."""
        body, key = create_request(model, prompt, options)
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
        while (size := page_size(limit, len(agents))) is not None:
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
            check_tail(tail, after)
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
            yield follow_event(step)

    async def run(
        self,
        *,
        model: str,
        prompt: str,
        on_line: Callable[[LogLine], None] | None = None,
        **options: Unpack[AgentOptions],
    ) -> AgentResult:
        """See `AgentFactory.run`; cancelling the awaiting task cancels the agent."""
        agent = await self.create(model=model, prompt=prompt, **options)
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
