"""Relaying one model call: the echo model answers itself; an upstream's answer is checked (whole) or
passed on chunk by chunk (streamed) while its usage is read on the way."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
from aiohttp import web

from agentfactory.catalog import CatalogModel
from agentfactory.gateway.bodies import JsonWorkers, PreparedBody, check_answer, encode
from agentfactory.gateway.ledger import Reservation
from agentfactory.gateway.providers import GatewayError, OpenAIUpstream, StreamUsage, Usage, echo_answer, echo_stream


async def complete(
    upstream: OpenAIUpstream | None,
    workers: JsonWorkers,
    model: CatalogModel,
    prepared: PreparedBody,
    held: Reservation,
) -> tuple[web.Response, Usage]:
    """A whole completion: the echo model's answer, or the upstream's, checked to be a chat completion."""
    if model.provider == "echo":
        answer, usage = echo_answer(model.id, prepared.last_user, prepared.prompt_chars, held.max_tokens)
        body = await workers.run(len(prepared.last_user), encode, answer)
        return web.Response(body=body, content_type="application/json"), usage
    assert upstream is not None, "the gateway is not started"
    raw = await upstream.complete(model, prepared.with_max_tokens(held.max_tokens))
    checked = await workers.run(len(raw), check_answer, raw, prepared.prompt_chars)
    if not checked.ok:
        raise GatewayError(
            502,
            "E_UPSTREAM",
            f"model {model.id!r}: the upstream answered something that is not a chat completion",
            outcome="upstream_error",
        )
    usage = Usage(checked.prompt_tokens, checked.completion_tokens)
    return web.Response(body=raw, content_type="application/json"), usage


async def stream(
    request: web.Request,
    upstream: OpenAIUpstream | None,
    model: CatalogModel,
    prepared: PreparedBody,
    held: Reservation,
) -> tuple[web.StreamResponse, Usage]:
    """Relay a streamed completion chunk by chunk, reading its usage on the way.

    The response is left open: aiohttp ends it once the gateway has stored the usage, so a client
    that saw the end of the stream also sees its tokens counted.
    """
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    if model.provider == "echo":
        answer, usage = echo_answer(model.id, prepared.last_user, prepared.prompt_chars, held.max_tokens)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(echo_stream(answer))
        return response, usage
    assert upstream is not None, "the gateway is not started"
    counter = StreamUsage()
    response = web.StreamResponse(headers=headers)
    payload = prepared.with_max_tokens(held.max_tokens)
    try:
        async with asyncio.timeout(model.timeout_seconds), upstream.stream(model, payload) as chunks:
            await response.prepare(request)
            async for data in chunks:
                counter.feed(data)
                await response.write(data)
    except ConnectionResetError:
        # The agent hung up mid-stream: what the upstream sent so far still counts.
        return response, counter.usage(prepared.prompt_chars)
    except (TimeoutError, httpx.HTTPError) as exc:
        timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
        message = f"model {model.id!r}: " + (
            f"the upstream did not answer within {model.timeout_seconds:g} s"
            if timed_out
            else f"the upstream stream broke ({type(exc).__name__})"
        )
        code = "E_UPSTREAM_TIMEOUT" if timed_out else "E_UPSTREAM"
        if not response.prepared:
            outcome = "upstream_timeout" if timed_out else "upstream_error"
            raise GatewayError(504 if timed_out else 502, code, message, outcome=outcome) from None
        with contextlib.suppress(ConnectionResetError):
            error = {"error": {"code": code, "message": message}}
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
    return response, counter.usage(prepared.prompt_chars)
