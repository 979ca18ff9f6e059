"""Model-call bodies and answers, parsed, checked and re-encoded: inline when small, else in worker processes.

`json.loads` of a few MiB holds the GIL for tens of milliseconds, in a thread as much as on the event
loop, and the API shares that loop: large bodies are parsed in processes of their own. The functions
here are pure and import nothing but the standard library, so a worker process starts light.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

# The completion-length keys the gateway sets itself, and what it removes: `n` > 1 multiplies the
# completion tokens (the API's default is one choice).
LENGTH_KEYS = ("max_completion_tokens", "max_tokens")
DROPPED_KEYS = ("n", *LENGTH_KEYS)

T = TypeVar("T")


@dataclass(frozen=True)
class PreparedBody:
    """A checked body, encoded without its completion-length keys (`with_max_tokens` adds them)."""

    payload: bytes
    stream: bool
    max_tokens: int | None
    length_key: str
    prompt_chars: int
    last_user: str

    def with_max_tokens(self, tokens: int) -> bytes:
        # `payload` is a JSON object holding at least `messages`: `{"messages":...}`.
        return b'{"' + self.length_key.encode() + b'":' + str(tokens).encode() + b"," + self.payload[1:]


@dataclass(frozen=True)
class BodyRefusal:
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class CheckedAnswer:
    """An upstream's non-streamed answer: whether it is a chat completion, and its usage."""

    ok: bool
    prompt_tokens: int
    completion_tokens: int


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of the prompt's text (messages and tool definitions), for usage estimates."""
    messages = body.get("messages") or []
    total = sum(len(content_text(m.get("content"))) + 1 for m in messages if isinstance(m, dict))
    if body.get("tools"):
        total += len(json.dumps(body["tools"]))
    return total


def prepare_body(raw: bytes, *, allowed_names: tuple[str, ...], upstream_model: str, echo: bool) -> Any:
    """Parse and check an agent's chat-completion body; PreparedBody or BodyRefusal."""
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return BodyRefusal(422, "E_SCHEMA", "the body is not valid JSON")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return BodyRefusal(422, "E_SCHEMA", "the body must be a JSON object with a `messages` list")
    named = body.get("model")
    if named not in (None, "", *allowed_names):
        return BodyRefusal(403, "E_FORBIDDEN", f"this agent may only use model {allowed_names[0]!r}, not {named!r}")
    requested: list[int] = []
    length_key = "max_tokens"
    for key in LENGTH_KEYS:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return BodyRefusal(422, "E_SCHEMA", f"`{key}` must be a positive integer")
        requested.append(value)
        length_key = key if key == "max_completion_tokens" else length_key
    for key in DROPPED_KEYS:
        body.pop(key, None)
    stream = bool(body.get("stream"))
    if stream and not echo:
        # Ask the upstream for the usage chunk so the agent's tokens are counted, not guessed.
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    else:
        body.pop("stream_options", None)
    body["model"] = upstream_model
    last_user = ""
    if echo:
        for message in body["messages"]:
            if isinstance(message, dict) and message.get("role") == "user":
                last_user = content_text(message.get("content"))
    try:
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (UnicodeEncodeError, RecursionError):
        return BodyRefusal(422, "E_SCHEMA", "the body holds text that is not valid Unicode")
    return PreparedBody(
        payload=payload,
        stream=stream,
        max_tokens=min(requested) if requested else None,
        length_key=length_key,
        prompt_chars=prompt_chars(body),
        last_user=last_user,
    )


def check_answer(raw: bytes, prompt_chars: int) -> CheckedAnswer:
    """Whether an upstream answer is a chat completion, and its usage (estimated when it gives none)."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return CheckedAnswer(False, 0, 0)
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return CheckedAnswer(False, 0, 0)
    usage = answer.get("usage")
    if isinstance(usage, dict):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int) and isinstance(c, int) and p >= 0 and c >= 0:
            return CheckedAnswer(True, p, c)
    completion = 0
    for choice in answer["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            completion += len(content_text(message.get("content")))
            if message.get("tool_calls"):
                completion += len(json.dumps(message["tool_calls"]))
    return CheckedAnswer(True, estimate_tokens(prompt_chars), estimate_tokens(completion))


def estimate_tokens(chars: int) -> int:
    """The usual ~4 characters per token, for answers that carry no `usage`."""
    return math.ceil(chars / 4)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _die_with(parent: int) -> None:
    """A worker's initializer: exit when the control plane is gone, even killed with SIGKILL (a
    worker holds both ends of its task pipe, so it would never see the end of its input)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class JsonWorkers:
    """Runs the functions above inline for small inputs, in worker processes for large ones.

    Processes are started with `spawn` (the control plane has threads by then, and a fork would copy
    their locks mid-use), on the first large body: not at start, where their imports would compete
    with the control plane's own start-up for a small machine's CPU. A worker that dies (killed for
    memory) breaks the pool: it is rebuilt and the call in flight fails.
    """

    def __init__(self, *, workers: int, inline_bytes: int) -> None:
        self._workers = workers
        self.inline_bytes = inline_bytes
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with,
            initargs=(os.getpid(),),
        )

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, size: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if size <= self.inline_bytes or self._pool is None:
            return fn(*args, **kwargs)
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args, **kwargs))
        except concurrent.futures.process.BrokenProcessPool:
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self.start()
            raise
