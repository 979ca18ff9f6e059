"""A small, real HTTP stand-in for the agentfactory API, served by uvicorn on 127.0.0.1 in a thread.

It speaks the SPEC §3 contract the CLI relies on (error envelope, agents, log pages, the SSE stream)
with scripted agents, plus knobs to misbehave: drop a stream in the middle of an event, skip lines in
the stream, answer the next request with an error, go down and come back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "test-key"
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@dataclass
class Plan:
    """What an agent created with a given prompt does."""

    lines: list[tuple[str, str]] = field(default_factory=list)  # (stream, text)
    final_status: str = "succeeded"  # or "running": stays running until DELETE
    exit_code: int | None = 0
    reason: str | None = "exit"
    error: str | None = None
    line_interval: float = 0.0  # seconds between lines becoming visible
    drop_after: set[int] = field(default_factory=set)  # stream drops (mid-event) after sending these seqs
    stream_skips: set[int] = field(default_factory=set)  # seqs the stream never sends (pages have them)


@dataclass
class Agent:
    id: str
    body: dict[str, Any]
    plan: Plan
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    cancelled_at_line: int = 0
    expires_at: float = 0.0

    def visible(self) -> int:
        if self.cancelled:
            return self.cancelled_at_line
        if not self.plan.line_interval:
            return len(self.plan.lines)
        return min(len(self.plan.lines), int((time.monotonic() - self.created) / self.plan.line_interval))

    def cancel(self) -> None:
        if self.status() not in TERMINAL:
            self.cancelled_at_line = self.visible()
            self.cancelled = True

    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.plan.final_status == "running" or self.visible() < len(self.plan.lines):
            return "running"
        return self.plan.final_status

    def line(self, seq: int) -> dict[str, Any]:
        stream, text = self.plan.lines[seq - 1]
        return {"seq": seq, "ts": 1_700_000_000.0 + seq, "stream": stream, "text": text}

    def doc(self) -> dict[str, Any]:
        status = self.status()
        out: dict[str, Any] = {
            "id": self.id,
            "status": status,
            "model": self.body.get("model"),
            "tools": self.body.get("tools", []),
            "created_at": "2024-01-01T00:00:00Z",
            "started_at": "2024-01-01T00:00:01Z",
            "finished_at": "2024-01-01T00:00:09Z" if status in TERMINAL else None,
            "expires_at": self.expires_at or "2024-01-01T00:10:00Z",
            "ttl_seconds": self.body.get("ttl_seconds", 600),
            "exit_code": None,
            "error": None,
            "reason": None,
            "metadata": self.body.get("metadata", {}),
            "links": {"self": f"/agents/{self.id}"},
        }
        if status in TERMINAL:
            n = self.visible()
            out |= {"log_lines": n, "log_bytes": 0, "log_sha256": "0" * 64}
            if status == "cancelled":
                out |= {"reason": "cancelled", "exit_code": None}
            else:
                out |= {"reason": self.plan.reason, "exit_code": self.plan.exit_code, "error": self.plan.error}
        return out


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"error": {"code": code, "message": message, "details": extra.get("details", [])}, "request_id": "req_1"}
    return JSONResponse(body, status_code=status, headers=headers)


class StandIn:
    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}
        self.agents: dict[str, Agent] = {}
        self.requests: list[dict[str, Any]] = []
        self.fail_next: list[Response] = []
        self.stream_opens: list[dict[str, str | None]] = []
        self.page_size = 100
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/agents", self.create_agent, methods=["POST"]),
                Route("/agents", self.list_agents, methods=["GET"]),
                Route("/agents/{id}", self.get_agent, methods=["GET"]),
                Route("/agents/{id}", self.delete_agent, methods=["DELETE"]),
                Route("/agents/{id}/ttl", self.set_ttl, methods=["POST"]),
                Route("/agents/{id}/result", self.result, methods=["GET"]),
                Route("/agents/{id}/logs", self.logs, methods=["GET"]),
                Route("/agents/{id}/stream", self.stream, methods=["GET"]),
                Route("/agents/{id}/artifacts", self.artifacts, methods=["GET"]),
                Route("/events", self.lifecycle_events, methods=["GET"]),
                Route("/catalog", self.catalog, methods=["GET"]),
                Route("/keys", self.create_key, methods=["POST"]),
                Route("/keys", self.list_keys, methods=["GET"]),
                Route("/keys/{id}", self.revoke_key, methods=["DELETE"]),
            ]
        )
        self.app.add_middleware(_Gate, standin=self)

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="critical", access_log=False,
            timeout_graceful_shutdown=0.2, lifespan="off",
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="standin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("stand-in server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError("stand-in server did not stop")

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def agent_for(self, prompt: str) -> Agent | None:
        return next((a for a in self.agents.values() if a.body.get("prompt") == prompt), None)

    # --- routes --------------------------------------------------------------------------------------

    async def create_agent(self, request: Request) -> Response:
        body = await request.json()
        if body.get("ttl_seconds", 1) > 3600:
            return _error(422, "E_SCHEMA", "body does not validate",
                          details=[{"loc": ["body", "ttl_seconds"], "msg": "must be <= 3600"}])  # fmt: skip
        if body.get("model") not in ("echo", "gpt-4o-mini"):
            return _error(422, "E_CATALOG", f"unknown model {body.get('model')!r}")
        agent = Agent(id=f"ag_{len(self.agents) + 1:04d}", body=body, plan=self.plans.get(body["prompt"], Plan()))
        self.agents[agent.id] = agent
        return JSONResponse(agent.doc(), status_code=201)

    async def list_agents(self, request: Request) -> Response:
        status = request.query_params.get("status")
        limit = int(request.query_params.get("limit", 50))
        start = int(request.query_params.get("cursor", 0))
        selector = [(k.removeprefix("metadata."), v) for k, v in request.query_params.multi_items()
                    if k.startswith("metadata.")]  # fmt: skip
        items = [
            a.doc() for a in reversed(self.agents.values())
            if status in (None, a.status())
            and all(str((a.body.get("metadata") or {}).get(k)) == v for k, v in selector)
        ]  # fmt: skip
        page = items[start : start + limit]
        next_cursor = str(start + limit) if start + limit < len(items) else None
        return JSONResponse({"items": page, "next_cursor": next_cursor})

    def _agent(self, request: Request) -> Agent | Response:
        agent = self.agents.get(request.path_params["id"])
        return agent if agent is not None else _error(404, "E_NOT_FOUND", "no such agent")

    async def get_agent(self, request: Request) -> Response:
        agent = self._agent(request)
        return agent if isinstance(agent, Response) else JSONResponse(agent.doc())

    async def delete_agent(self, request: Request) -> Response:
        agent = self._agent(request)
        if isinstance(agent, Response):
            return agent
        agent.cancel()
        return JSONResponse(agent.doc())

    async def set_ttl(self, request: Request) -> Response:
        agent = self._agent(request)
        if isinstance(agent, Response):
            return agent
        agent.expires_at = 1_700_000_000 + (await request.json())["ttl_seconds"]
        return JSONResponse(agent.doc())

    async def result(self, request: Request) -> Response:
        agent = self._agent(request)
        if isinstance(agent, Response):
            return agent
        doc = agent.doc()
        keys = ("id", "status", "reason", "exit_code", "error", "log_lines", "log_bytes", "log_sha256")
        return JSONResponse({k: doc.get(k) for k in keys} | {"timings": {"accepted": 0.0, "finished": 9.0},
                                                            "tokens": {"prompt": 3, "completion": 4}})  # fmt: skip

    async def logs(self, request: Request) -> Response:
        agent = self._agent(request)
        if isinstance(agent, Response):
            return agent
        cursor = int(request.query_params.get("cursor", 0))
        limit = min(int(request.query_params.get("limit", 1000)), self.page_size)
        only = request.query_params.get("stream")
        visible = agent.visible()
        if "tail" in request.query_params:
            cursor = max(0, visible - int(request.query_params["tail"]))
        lines = [agent.line(s) for s in range(cursor + 1, visible + 1)]
        lines = [ln for ln in lines if only in (None, ln["stream"])][:limit]
        last = lines[-1]["seq"] if lines else cursor
        complete = agent.status() in TERMINAL and not [
            s for s in range(last + 1, visible + 1) if only in (None, agent.line(s)["stream"])
        ]
        return JSONResponse({"lines": lines, "next_cursor": None if complete else last, "complete": complete})

    async def stream(self, request: Request) -> Response:
        agent = self._agent(request)
        if isinstance(agent, Response):
            return agent
        last_id = request.headers.get("last-event-id")
        self.stream_opens.append({"last_event_id": last_id, "tail": request.query_params.get("tail")})
        after = int(last_id or request.query_params.get("after") or 0)
        if tail := request.query_params.get("tail"):
            after = max(after, agent.visible() - int(tail))
        return StreamingResponse(self._events(agent, after), media_type="text/event-stream")

    async def _events(self, agent: Agent, after: int) -> AsyncIterator[str]:
        sent_status = None
        yield ": hello\n\n"
        while True:
            terminal = agent.status() in TERMINAL
            visible = agent.visible()
            while after < visible:
                after += 1
                if after in agent.plan.stream_skips:
                    continue
                data = json.dumps(agent.line(after), ensure_ascii=False)
                if after in agent.plan.drop_after:
                    agent.plan.drop_after.discard(after)
                    yield f'event: log\nid: {after}\ndata: {data}\n\nevent: log\nid: {after + 1}\ndata: {{"seq"'
                    await asyncio.sleep(0.05)
                    raise ConnectionAbortedError("scripted drop")
                yield f"event: log\nid: {after}\ndata: {data}\n\n"
            if (status := agent.status()) != sent_status:
                sent_status = status
                yield f"event: status\ndata: {json.dumps(agent.doc())}\n\n"
            if terminal:
                yield f"event: end\ndata: {json.dumps(agent.doc())}\n\n"
                return
            await asyncio.sleep(0.01)

    async def artifacts(self, request: Request) -> Response:
        agent = self._agent(request)
        if isinstance(agent, Response):
            return agent
        item = {"path": "out/report.md", "bytes": 12, "sha256": "a" * 64}
        return JSONResponse({"items": [item], "dropped": [], "complete": True})

    async def lifecycle_events(self, request: Request) -> Response:
        """`GET /events` without follow: one `agent.queued` per agent, then the stream ends."""
        docs = [{"type": "agent.queued", "id": n, "created_at": "2024-01-01T00:00:00.000Z", "agent": a.doc()}
                for n, a in enumerate(self.agents.values(), 1)]  # fmt: skip
        body = "".join(f"id: {d['id']}\ndata: {json.dumps(d)}\n\n" for d in docs)
        return Response(body, media_type="text/event-stream")

    async def catalog(self, request: Request) -> Response:
        return JSONResponse({
            "version": 1, "limits": {"default_ttl_seconds": 600, "max_ttl_seconds": 3600},
            "models": [{"id": "echo", "provider": "echo", "description": "diagnostic model"}],
            "tools": [{"id": "python", "description": "run Python", "network": False},
                      {"id": "browser_server", "description": "fetch web pages", "network": True}],
        })  # fmt: skip

    async def create_key(self, request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"id": "key_0001", "key": "af_secret"} | body, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        return JSONResponse({"items": [{"id": "key_0001", "name": "ci-main", "admin": False, "models": [],
                                        "tools": ["python"], "max_concurrent_agents": 10}]})  # fmt: skip

    async def revoke_key(self, request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"], "revoked": True})


class _Gate:
    """Records every request, answers scripted failures, and checks the API key."""

    def __init__(self, app: Any, standin: StandIn):
        self.app, self.standin = app, standin

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        body = await request.body()
        self.standin.requests.append({
            "method": request.method, "path": request.url.path, "query": dict(request.query_params),
            "headers": dict(request.headers), "json": json.loads(body) if body else None,
        })  # fmt: skip

        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if self.standin.fail_next:
            return await self.standin.fail_next.pop(0)(scope, receive, send)
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return await _error(401, "E_AUTH", "unknown API key")(scope, receive, send)
        await self.app(scope, replay, send)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
