"""The gateway's model providers: `echo` answered in-process, `openai` forwarded to an upstream.

Every failure of an upstream becomes a `GatewayError` naming the model, within the model's
`timeout_seconds`: an agent gets a clear answer, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from agentfactory.catalog import CatalogModel
from agentfactory.gateway.bodies import content_text, estimate_tokens

# Upstream error bodies are relayed to the agent (they explain a refused request) but bounded.
MAX_RELAYED_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


class GatewayError(Exception):
    """An answer the gateway gives instead of a completion: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str, *, outcome: str, retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.outcome = outcome
        self.retry_after = retry_after


def echo_answer(model_id: str, last_user: str, prompt_chars: int, max_tokens: int) -> tuple[dict[str, Any], Usage]:
    """The `echo` model: the last user message back as the assistant's answer, no tool call.

    Like a real model it stops at `max_tokens` (~4 characters a token), so it never uses more than
    the gateway reserved for it.
    """
    content = last_user[: max_tokens * 4]
    usage = Usage(estimate_tokens(prompt_chars), estimate_tokens(len(content)))
    answer = {
        "id": f"chatcmpl-echo-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "length" if len(content) < len(last_user) else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }
    return answer, usage


def echo_stream(answer: Mapping[str, Any]) -> bytes:
    """The echo answer as the Server-Sent Events of a streamed chat completion."""
    base = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = answer["choices"][0]
    content = choice["message"]["content"]
    chunks = [
        base | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": content}}]},
        base | {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]},
        base | {"choices": [], "usage": answer["usage"]},
    ]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


class StreamUsage:
    """Reads the SSE chunks of a streamed completion as they pass, for the final `usage` chunk."""

    def __init__(self) -> None:
        self._pending = b""
        self._completion_chars = 0
        self.reported: Usage | None = None

    def feed(self, data: bytes) -> None:
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
                if isinstance(p, int) and isinstance(c, int):
                    self.reported = Usage(p, c)
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict):
                    self._completion_chars += len(content_text(delta.get("content")))
                    if delta.get("tool_calls"):
                        self._completion_chars += len(json.dumps(delta["tool_calls"]))

    def usage(self, prompt_chars: int) -> Usage:
        if self.reported is not None:
            return self.reported
        return Usage(estimate_tokens(prompt_chars), estimate_tokens(self._completion_chars))


class OpenAIUpstream:
    """Calls OpenAI-compatible `/chat/completions` endpoints with one pooled httpx client."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))

    async def aclose(self) -> None:
        await self._client.aclose()

    def _request(self, model: CatalogModel, payload: bytes) -> httpx.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if model.api_key_env:
            key = self._environ.get(model.api_key_env)
            if not key:
                raise GatewayError(
                    502,
                    "E_UPSTREAM",
                    f"model {model.id!r} is not available: the control plane has no "
                    f"{model.api_key_env} in its environment",
                    outcome="upstream_error",
                )
            headers["Authorization"] = f"Bearer {key}"
        url = f"{(model.base_url or '').rstrip('/')}/chat/completions"
        return self._client.build_request("POST", url, content=payload, headers=headers, timeout=model.timeout_seconds)

    async def complete(self, model: CatalogModel, payload: bytes) -> bytes:
        """One non-streamed completion: the upstream's answer as it sent it (the caller checks it)."""
        request = self._request(model, payload)
        try:
            async with asyncio.timeout(model.timeout_seconds):
                response = await self._client.send(request)
        except (TimeoutError, httpx.TimeoutException):
            raise _timeout(model) from None
        except httpx.HTTPError as exc:
            raise _unreachable(model, exc) from None
        if response.status_code != 200:
            raise _refused(model, response.status_code, response.text, response.headers.get("retry-after"))
        return response.content

    @asynccontextmanager
    async def stream(self, model: CatalogModel, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        """A streamed completion: yields the upstream's raw SSE bytes once it answered 200.

        The caller bounds the whole stream with the model's timeout; errors before the first
        byte are `GatewayError`s.
        """
        request = self._request(model, payload)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise _timeout(model) from None
        except httpx.HTTPError as exc:
            raise _unreachable(model, exc) from None
        try:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                raise _refused(model, response.status_code, text, response.headers.get("retry-after"))
            yield response.aiter_bytes()
        finally:
            await response.aclose()


def _timeout(model: CatalogModel) -> GatewayError:
    return GatewayError(
        504,
        "E_UPSTREAM_TIMEOUT",
        f"model {model.id!r}: the upstream did not answer within {model.timeout_seconds:g} s",
        outcome="upstream_timeout",
    )


def _unreachable(model: CatalogModel, exc: httpx.HTTPError) -> GatewayError:
    return GatewayError(
        502,
        "E_UPSTREAM",
        f"model {model.id!r} is unreachable: {type(exc).__name__} calling its upstream",
        outcome="upstream_error",
    )


def _refused(model: CatalogModel, status: int, text: str, retry_after: str | None) -> GatewayError:
    detail = _upstream_message(text)
    if status == 429:
        return GatewayError(
            429,
            "E_UPSTREAM_RATE_LIMIT",
            f"model {model.id!r}: the upstream is rate limiting: {detail}",
            outcome="upstream_rate_limited",
            retry_after=retry_after,
        )
    if status in (401, 403):
        # The key is the control plane's, not the agent's: report a gateway-side failure.
        return GatewayError(
            502,
            "E_UPSTREAM",
            f"model {model.id!r}: the upstream refused the control plane's credentials (HTTP {status})",
            outcome="upstream_error",
        )
    if 400 <= status < 500:
        return GatewayError(
            400,
            "E_UPSTREAM_REJECTED",
            f"model {model.id!r}: the upstream refused the request: {detail}",
            outcome="upstream_rejected",
        )
    return GatewayError(
        502,
        "E_UPSTREAM",
        f"model {model.id!r}: the upstream failed with HTTP {status}: {detail}",
        outcome="upstream_error",
    )


def _upstream_message(text: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"][:MAX_RELAYED_ERROR_CHARS]
        if isinstance(err, str):
            return err[:MAX_RELAYED_ERROR_CHARS]
    return text.strip()[:MAX_RELAYED_ERROR_CHARS] or "(empty body)"
