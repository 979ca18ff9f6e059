"""A fake OpenAI-compatible upstream: a real HTTP server on 127.0.0.1 whose answers a test scripts.

A *responder* turns each request body into a `Reply` (or a plain dict, answered 200 as JSON). The
server records every request it saw (path, Authorization header, body) so tests can check what the
gateway sent. Responders here are stateless functions of the conversation, so parallel agents can
share one server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the fake answers: a status and a JSON (or raw) body, optionally late or as SSE chunks."""

    status: int = 200
    body: dict[str, Any] | bytes = b""
    delay: float = 0.0
    sse: list[dict[str, Any]] | None = None
    chunk_delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    path: str
    authorization: str | None
    body: Any
    at: float


Responder = Callable[[Any], "Reply | dict[str, Any]"]


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: twenty agents' calls at once on a loaded machine
    # overflowed it and a connection was reset (a 502 the gateway then rightly reported).
    request_queue_size = 128


class FakeOpenAI:
    """The fake upstream; `base_url` is what a catalog model's `base_url` should be."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or final_answer("ok")
        self.seen: list[Seen] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def wait(self, seconds: float) -> None:
        """Sleep that ends early when the server closes (slow replies never outlive a test)."""
        self._closing.wait(seconds)


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are separate writes: without this, Nagle + delayed ACK add ~40 ms.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            fake.record(Seen(self.path, self.headers.get("Authorization"), body, time.monotonic()))
            reply = fake.responder(body)
            if isinstance(reply, dict):
                reply = Reply(body=reply)
            if reply.delay:
                fake.wait(reply.delay)
            if reply.sse is not None:
                self._send_sse(reply)
                return
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            kind = "application/json" if isinstance(reply.body, dict) else "text/plain"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _send_sse(self, reply: Reply) -> None:
            self.close_connection = True
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in [*(reply.sse or []), None]:
                data = b"data: [DONE]\n\n" if chunk is None else b"data: " + json.dumps(chunk).encode() + b"\n\n"
                self.wfile.write(data)
                self.wfile.flush()
                if reply.chunk_delay:
                    fake.wait(reply.chunk_delay)

    return Handler


# --- answers ----------------------------------------------------------------------------------


def completion(
    content: str | None = None, tool_calls: list[dict[str, Any]] | None = None, usage: tuple[int, int] | None = (7, 3)
) -> dict[str, Any]:
    """A chat completion; `usage=None` leaves the usage field out (the gateway then estimates)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-upstream",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
    }
    if usage is not None:
        answer["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return answer


def tool_call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call_{uuid.uuid4().hex[:10]}", "type": "function", "function": {"name": name, "arguments": args}}


def tool_messages(body: Any) -> list[dict[str, Any]]:
    return [m for m in (body or {}).get("messages", []) if m.get("role") == "tool"]


# --- responders -------------------------------------------------------------------------------


def final_answer(content: str, usage: tuple[int, int] | None = (7, 3)) -> Responder:
    return lambda _body: completion(content, usage=usage)


def tool_then_final(name: str, arguments: dict[str, Any] | str, usage: tuple[int, int] = (7, 3)) -> Responder:
    """First turn: call the tool. Once a tool result is in the conversation: a final answer quoting it."""

    def respond(body: Any) -> dict[str, Any]:
        results = tool_messages(body)
        if not results:
            return completion(None, [tool_call(name, arguments)], usage=usage)
        return completion("final: " + results[-1]["content"], usage=usage)

    return respond


def python_then_final(code: str) -> Responder:
    return tool_then_final("python", {"code": code})


def always_tool(name: str, arguments: dict[str, Any]) -> Responder:
    """Never gives a final answer (for the step bound)."""
    return lambda _body: completion(None, [tool_call(name, arguments)])


def chatty(tokens: int = 5000) -> Responder:
    """Every answer claims a huge usage and asks for another tool call."""
    return lambda _body: completion("blah " * 20, [tool_call("shell", {"command": "true"})], usage=(tokens, tokens))


def garbage() -> Responder:
    return lambda _body: Reply(200, b"<html>this is not json</html>")


def failing(status: int = 500, message: str = "upstream exploded") -> Responder:
    return lambda _body: Reply(status, {"error": {"message": message, "type": "server_error"}})


def slow(seconds: float) -> Responder:
    return lambda _body: Reply(200, completion("too late"), delay=seconds)


def streamed(words: list[str], usage: tuple[int, int] = (11, 5), chunk_delay: float = 0.0) -> Responder:
    """An SSE answer, one word per chunk, then a usage chunk when the request asked for it."""

    def respond(body: Any) -> Reply:
        base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": "fake-upstream"}
        chunks = [base | {"choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
        chunks.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if ((body or {}).get("stream_options") or {}).get("include_usage"):
            u = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
            chunks.append(base | {"choices": [], "usage": u})
        return Reply(sse=chunks, chunk_delay=chunk_delay)

    return respond


def closed_port_url() -> str:
    """The base URL of a loopback port nothing listens on (an upstream that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
