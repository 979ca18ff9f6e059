"""The agentfactory HTTP client for asyncio: `client`'s routes (`Endpoints`), retries and follower
over an httpx.AsyncClient. Same errors (`client_errors`), same SSE parser (`sse_client`), same follow
bookkeeping (`follow`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from agentfactory.client_errors import ApiError, ServerUnreachable, error_from_response, transport_cause
from agentfactory.endpoints import (
    Call,
    Endpoints,
    RetryPolicy,
    WaitPacer,
    answer,
    log_page_limit,
    missing_key_hint,
    stream_headers,
)
from agentfactory.follow import Backfill, End, FollowCursor, Line, Reconnect, Status
from agentfactory.sse_client import SSEEvent, SSEParser


class AsyncApiClient(Endpoints[Awaitable[Any]]):
    """Asynchronous client of the agentfactory API: `async with AsyncApiClient(url, key) as api:`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        retries: int | RetryPolicy = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        options = self._configure(base_url, api_key, retries)
        self._http = httpx.AsyncClient(**options, timeout=httpx.Timeout(timeout), transport=transport)

    async def __aenter__(self) -> AsyncApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **call.httpx_kwargs())
            except httpx.TransportError as exc:
                delay = self._settle(call, attempt, error=exc)
            else:
                if response.status_code < 400:
                    return answer(response)
                delay = self._settle(call, attempt, response=response)
            await asyncio.sleep(delay)
            attempt += 1

    async def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        return await self._call(Call(method, path, idempotent=idempotent, **kwargs))

    async def iter_logs(
        self, agent_id: str, *, after: int | None = None, stream: str | None = None, until: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every captured line after `after` (and before `until`), page by page, to the current end."""
        cursor = after
        while True:
            page = await self.get_logs(agent_id, cursor=cursor, limit=log_page_limit(until, cursor), stream=stream)
            for line in page.get("lines") or []:
                if until is not None and line["seq"] >= until:
                    return
                yield line
            if not page.get("lines") or page.get("complete") or page.get("next_cursor") is None:
                return
            cursor = int(page["next_cursor"])

    async def wait_agent(self, agent_id: str, *, timeout: float | None = None, poll_max: float = 1.0) -> dict[str, Any]:
        """Polls `GET /agents/{id}` until the agent is terminal; `WaitTimeout` after `timeout` seconds."""
        pacer = WaitPacer(agent_id, timeout, poll_max)
        while not pacer.done(agent := await self.get_agent(agent_id)):
            await asyncio.sleep(pacer.pause())
        return agent

    @asynccontextmanager
    async def stream_agent(
        self,
        agent_id: str,
        *,
        last_event_id: int | None = None,
        tail: int | None = None,
        read_timeout: float = 45.0,
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        """Opens `GET /agents/{id}/stream`; yields its events (see `ApiClient.stream_agent`)."""
        params = {"tail": tail} if tail is not None and last_event_id is None else {}
        timeout = httpx.Timeout(10.0, read=read_timeout)
        try:
            async with self._http.stream(
                "GET",
                f"/agents/{agent_id}/stream",
                headers=stream_headers(last_event_id),
                params=params,
                timeout=timeout,
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise missing_key_hint(error_from_response(response), self.has_api_key)
                yield _aiter_sse(response.aiter_bytes())
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, transport_cause(exc)) from exc


async def _aiter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """`sse_client.iter_sse` over an async byte stream: the same parser, fed by await."""
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event


class AsyncAgentFollower:
    """`client.AgentFollower` for asyncio: `async for step in follower.events(): ...` yields
    `follow.Line`, `follow.Status` and, last, `follow.End`; resumable after an interruption."""

    def __init__(
        self,
        client: AsyncApiClient,
        agent_id: str,
        *,
        tail: int | None = None,
        after: int | None = None,
        reconnect_window: float = 60.0,
    ):
        self.client = client
        self.agent_id = agent_id
        self.reconnect_window = reconnect_window
        self.cursor = FollowCursor(after=after, tail=tail)

    async def events(self, *, max_seconds: float | None = None) -> AsyncIterator[Line | Status | End]:
        cursor = self.cursor
        policy = Reconnect(self.client.base_url, window=self.reconnect_window, max_seconds=max_seconds)
        while True:
            try:
                async with self.client.stream_agent(
                    self.agent_id,
                    last_event_id=cursor.resume_id(),
                    tail=cursor.tail,
                    read_timeout=policy.read_timeout(),
                ) as events:
                    policy.connected()
                    async for event in events:
                        policy.saw(event)
                        for step in cursor.steps(event):
                            if isinstance(step, Backfill):
                                lines = self.client.iter_logs(self.agent_id, after=cursor.last_seq, until=step.until)
                                async for line in lines:
                                    if cursor.accept(line):
                                        yield Line(line)
                            elif isinstance(step, Line):
                                if cursor.accept(step.line):
                                    yield step
                            else:
                                yield step
                                if isinstance(step, End):
                                    return
                        if policy.out_of_time():
                            break
                cause = "stream closed before its end"
            except (ServerUnreachable, ApiError) as exc:
                cause = policy.cause_of(exc)
            await asyncio.sleep(policy.next_delay(cause))
