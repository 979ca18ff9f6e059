"""The agentfactory HTTP client for asyncio: `client`'s routes (`Endpoints`), retries and follower
over an httpx.AsyncClient. Same errors (`client_errors`), same SSE parser (`sse_client`), same follow
bookkeeping (`follow`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from agentfactory.client_errors import ApiError, ServerUnreachable, error_from_response, transport_cause
from agentfactory.endpoints import (
    EVENTS_TIMEOUT,
    Call,
    Endpoints,
    Reconnects,
    RetryPolicy,
    WaitPacer,
    answer,
    drop_cause,
    events_request,
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

    async def upload(
        self, chunks: AsyncIterable[bytes], *, gzip: bool = True, timeout: float = 600.0
    ) -> dict[str, Any]:
        """POST /uploads with a tar (or tar.gz) body streamed from `chunks` (see `ApiClient.upload`)."""
        content_type = "application/gzip" if gzip else "application/x-tar"
        try:
            response = await self._http.post(
                "/uploads", content=chunks, headers={"Content-Type": content_type}, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, transport_cause(exc)) from exc
        if response.status_code >= 400:
            raise missing_key_hint(error_from_response(response), self.has_api_key)
        result: dict[str, Any] = response.json()
        return result

    async def download_artifact(self, agent_id: str, path: str, dest: Path, *, timeout: float = 600.0) -> str:
        """Stream one artifact into `dest` (made with its parents); returns the sha256 of what was written."""
        digest = hashlib.sha256()
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            url = f"/agents/{agent_id}/artifacts/{quote(path)}"
            async with self._http.stream("GET", url, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise missing_key_hint(error_from_response(response), self.has_api_key)
                with open(dest, "wb") as out:
                    async for data in response.aiter_bytes(1 << 20):
                        digest.update(data)
                        out.write(data)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, transport_cause(exc)) from exc
        return digest.hexdigest()

    async def iter_events(
        self,
        *,
        follow: bool,
        after: int | None = None,
        agent_id: str | None = None,
        types: list[str] | None = None,
        reconnect_window: float = 60.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Lifecycle events from `GET /events` (see `ApiClient.iter_events`)."""
        last = after
        reconnects = Reconnects(self.base_url, reconnect_window)
        while True:
            params, headers = events_request(follow, last, agent_id, types)
            try:
                async with self._http.stream(
                    "GET", "/events", params=params, headers=headers, timeout=EVENTS_TIMEOUT
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise missing_key_hint(error_from_response(response), self.has_api_key)
                    reconnects.connected()
                    async for event in _aiter_sse(response.aiter_bytes()):
                        doc: dict[str, Any] = json.loads(event.data)
                        last = int(doc["id"])
                        yield doc
                if not follow:
                    return
                cause = "stream closed"
            except (httpx.TransportError, ApiError) as exc:
                cause = drop_cause(exc, follow)
            await asyncio.sleep(reconnects.dropped(cause))

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
