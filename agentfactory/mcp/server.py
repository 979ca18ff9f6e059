"""The MCP endpoint of the control plane: the tools of `agentfactory.mcp.tools` and resource
templates for an agent's log and its artifacts (`agentfactory.mcp.artifacts`), over the streamable
HTTP transport at `/mcp`.

Authentication is the edge middleware's, as for every other route: it checks the request's
`Authorization: Bearer <api key>` (401 envelope without one), applies the key's rate limit and
puts the `Caller` in `scope["state"]`. Each tool call reads that caller from the HTTP request that
carried it, so every call acts as the key of its own request.

The transport runs stateless (no MCP session is kept between HTTP requests): any control-plane
replica can answer any request, and there is no per-session state to bound or expire.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import mcp_types as types
import structlog
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agentfactory import __version__
from agentfactory.errors import AgentFactoryError, AuthError, SchemaError
from agentfactory.errors import error_body as envelope_body
from agentfactory.mcp.artifacts import TEMPLATE as ARTIFACT_TEMPLATE
from agentfactory.mcp.artifacts import list_artifact_resources, read_artifact_resource
from agentfactory.mcp.tools import MAX_LOG_PAGE, TOOLS, ReadLogs, ToolDef, input_schema, read_logs
from agentfactory.service import agents
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services

log = structlog.get_logger("agentfactory.mcp")
LOG_URI = re.compile(r"^agentfactory://agents/(?P<agent_id>[^/?#]+)/logs(?:\?(?P<query>.*))?$")
LOG_URI_TEMPLATE = "agentfactory://agents/{agent_id}/logs{?cursor,limit,stream}"
RECENT_AGENT_RESOURCES = 20
INSTRUCTIONS = (
    "agentfactory launches short-lived, sandboxed AI agents, each in its own container. "
    "list_catalog shows the models and tools; launch_agent starts one; wait_agent waits for its end "
    "and returns its result and last lines; read_logs pages through everything it printed; read_artifact "
    "(or the resource agentfactory://agents/{agent_id}/artifacts/{path}) reads a file it handed back. "
    "Errors carry a code: E_SCHEMA, E_CATALOG, E_FORBIDDEN, E_NOT_FOUND, E_QUOTA, E_RATE_LIMIT, E_RUNTIME."
)


def caller_of(rctx: ServerRequestContext[Any, Any]) -> Caller:
    """The key the edge middleware authenticated for the HTTP request carrying this message."""
    request = rctx.request
    state = getattr(request, "scope", {}).get("state", {}) if request is not None else {}
    caller = state.get("caller")
    if not isinstance(caller, Caller):
        raise AuthError("missing Authorization: Bearer <api key>")
    return caller


def request_id_of(rctx: ServerRequestContext[Any, Any]) -> str:
    request = rctx.request
    state = getattr(request, "scope", {}).get("state", {}) if request is not None else {}
    return str(state.get("request_id", "-"))


def schema_error(exc: ValidationError) -> SchemaError:
    """A tool-argument validation error, shaped like the HTTP 422 (loc without the "body" prefix)."""
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    first = details[0] if details else {"loc": [], "msg": "invalid arguments"}
    where = ".".join(str(p) for p in first["loc"]) or "arguments"
    return SchemaError(f"{where}: {first['msg']}", details=details)


def error_body(exc: AgentFactoryError, request_id: str) -> dict[str, Any]:
    """The HTTP error envelope; `retry_after` (seconds) stands in for the Retry-After header."""
    body = envelope_body(code=exc.code, message=exc.message, request_id=request_id, details=exc.details)
    if exc.retry_after is not None:
        body["error"]["retry_after"] = exc.retry_after
    return body


@contextmanager
def rpc_errors(rctx: ServerRequestContext[Any, Any]) -> Iterator[None]:
    """Product errors as JSON-RPC errors (resource reads have no isError form); `data` is the
    HTTP error envelope."""
    try:
        yield
    except AgentFactoryError as exc:
        rpc = types.INTERNAL_ERROR if exc.status >= 500 else types.INVALID_PARAMS
        raise MCPError(rpc, f"{exc.code}: {exc.message}", data=error_body(exc, request_id_of(rctx))) from None


def _dump(value: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


class McpEndpoint:
    """The MCP server over the services. `route` goes on the app's router; the lifespan runs
    `session_manager.run()` around the app's life."""

    def __init__(self, svc: Services):
        self.svc = svc
        self.tools = {t.name: t for t in TOOLS}
        self._schemas = {t.name: input_schema(t.input) for t in TOOLS}
        self.server: Server[Any] = Server(
            "agentfactory",
            version=__version__,
            title="agentfactory",
            instructions=INSTRUCTIONS,
            get_tool_input_schema=self._input_schema_of,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
        )
        # DNS-rebinding protection guards unauthenticated local servers; every request here needs
        # a Bearer key a rebinding page does not have, and the server is reached by any host name.
        self.session_manager = StreamableHTTPSessionManager(
            app=self.server,
            stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=svc.settings.max_body_bytes,
        )
        self.asgi_app = _McpAsgi(self.session_manager)
        # POST only: stateless, there is no session to DELETE and no server-initiated message to
        # GET (the SDK would hold such a GET open forever); the spec lets a server answer 405.
        self.route = Route("/mcp", endpoint=self.asgi_app, methods=["POST"], include_in_schema=False)
        self._tool_list = [self._describe(t) for t in TOOLS]

    def _describe(self, tool: ToolDef) -> types.Tool:
        return types.Tool(
            name=tool.name,
            title=tool.title,
            description=tool.description,
            input_schema=self._schemas[tool.name],
            output_schema=tool.output.model_json_schema(mode="serialization"),
            annotations=types.ToolAnnotations(
                title=tool.title,
                read_only_hint=tool.read_only,
                destructive_hint=tool.destructive,
                idempotent_hint=tool.read_only,
                open_world_hint=False,
            ),
        )

    def _input_schema_of(self, name: str) -> dict[str, Any] | None:
        return self._schemas.get(name)

    async def _list_tools(
        self, rctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._tool_list)

    async def _call_tool(
        self, rctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = self.tools.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}")
        started = time.perf_counter()
        request_id = request_id_of(rctx)
        code = "ok"
        try:
            caller = caller_of(rctx)
            try:
                args = tool.input.model_validate(params.arguments or {})
            except ValidationError as exc:
                raise schema_error(exc) from None
            out = _dump(await tool.run(self.svc, caller, args))
            text = json.dumps(out, separators=(",", ":"))
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=out)
        except AgentFactoryError as exc:
            code = exc.code
            return self._error_result(exc, request_id)
        except Exception as exc:
            code = "E_INTERNAL"
            log.error("mcp_tool_failed", tool=tool.name, error_type=type(exc).__name__, exc_info=exc)
            bug = AgentFactoryError("internal error; see the server log for this request_id")
            return self._error_result(bug, request_id)
        finally:
            log.info("mcp_tool_call", tool=tool.name, code=code,
                     duration_ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip

    @staticmethod
    def _error_result(exc: AgentFactoryError, request_id: str) -> types.CallToolResult:
        body = error_body(exc, request_id)
        text = f"{exc.code}: {exc.message}\n{json.dumps(body, separators=(',', ':'))}"
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=body, is_error=True
        )

    # -- resources: an agent's log and artifacts -----------------------------------------------------------------

    async def _list_resource_templates(
        self, rctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        template = types.ResourceTemplate(
            name="agent-log",
            title="An agent's log",
            uri_template=LOG_URI_TEMPLATE,
            description=f"A page (at most {MAX_LOG_PAGE} lines) of what an agent printed, as read_logs returns it.",
            mime_type="application/json",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template, ARTIFACT_TEMPLATE])

    async def _list_resources(
        self, rctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        """The logs of the caller's most recent agents, and their artifacts."""
        with rpc_errors(rctx):
            caller = caller_of(rctx)
            page = await agents.list_agents(self.svc, caller, status=None, limit=RECENT_AGENT_RESOURCES, cursor=None)
            artifacts = await list_artifact_resources(self.svc, caller)
        resources = [
            types.Resource(
                uri=f"agentfactory://agents/{a.id}/logs",
                name=f"{a.id} log",
                description=f"{a.model} agent, {a.status}, created {a.created_at}",
                mime_type="application/json",
            )
            for a in page.items
        ]
        return types.ListResourcesResult(resources=resources + artifacts)

    async def _read_resource(
        self, rctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        with rpc_errors(rctx):
            artifact = await read_artifact_resource(self.svc, caller_of(rctx), uri)
        if artifact is not None:
            return artifact
        match = LOG_URI.match(uri)
        if match is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"no resource {uri[:300]!r}; agent logs are {LOG_URI_TEMPLATE}, "
                f"artifacts {ARTIFACT_TEMPLATE.uri_template}",
            )
        query = {k: v[-1] for k, v in parse_qs(match["query"] or "").items()}
        with rpc_errors(rctx):
            caller = caller_of(rctx)
            try:
                args = ReadLogs.model_validate({"agent_id": match["agent_id"], "limit": MAX_LOG_PAGE, **query})
            except ValidationError as exc:
                raise schema_error(exc) from None
            page = await read_logs(self.svc, caller, args)
        text = page.model_dump_json()
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )


class _McpAsgi:
    """The ASGI app of the route (an instance, so Starlette passes it the raw scope)."""

    def __init__(self, session_manager: StreamableHTTPSessionManager):
        self.session_manager = session_manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state", {})
        if not isinstance(state.get("caller"), Caller):  # the edge middleware authenticates /mcp
            body = envelope_body(code="E_AUTH", message="missing Authorization: Bearer <api key>",
                                 request_id=str(state.get("request_id", "-")))  # fmt: skip
            response = JSONResponse(body, status_code=401)
            await response(scope, receive, send)
            return
        await self.session_manager.handle_request(scope, receive, send)


def build_mcp(svc: Services) -> McpEndpoint:
    """The MCP endpoint for this app; nothing runs until `session_manager.run()` is entered."""
    # The SDK logs a line per request at INFO ("Terminating session: None"); our access log and
    # `mcp_tool_call` lines already say what happened.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    return McpEndpoint(svc)
