"""`agentfactory mcp --stdio`: the server's MCP tools for hosts that only speak stdio.

A relay, not a second implementation: every request the host sends on stdin is forwarded to the
control plane's `/mcp` endpoint (streamable HTTP, `Authorization: Bearer <api key>`) and its answer
is written back on stdout. So the tools, their schemas, their errors and the key's quotas are the
server's own. Imports only the MCP SDK and httpx2 (no server stack).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

from agentfactory import __version__

# wait_agent may hold a request for 300 s.
READ_TIMEOUT_SECONDS = 360.0
EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 3


def relay_server(remote: ClientSession, instructions: str | None) -> Server[Any]:
    """A stdio-side MCP server whose every handler asks `remote`."""

    async def list_tools(
        _ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await remote.list_tools(params=params)

    async def call_tool(
        _ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await remote.call_tool(params.name, params.arguments, read_timeout_seconds=READ_TIMEOUT_SECONDS)

    async def list_resources(
        _ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await remote.list_resources(params=params)

    async def list_resource_templates(
        _ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await remote.list_resource_templates(params=params)

    async def read_resource(
        _ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await remote.read_resource(params.uri)

    return Server(
        "agentfactory",
        version=__version__,
        title="agentfactory (stdio relay)",
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
    )


async def serve_stdio(url: str, api_key: str) -> None:
    """Connect to `url`/mcp as `api_key` (failing fast if the server or the key is refused), then
    relay stdin/stdout until the host closes stdin."""
    endpoint = url.rstrip("/") + "/mcp"
    timeout = httpx2.Timeout(30.0, read=READ_TIMEOUT_SECONDS)
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout) as http,
        streamable_http_client(endpoint, http_client=http) as (read, write),
        ClientSession(read, write) as remote,
    ):
        init = await remote.initialize()
        server = relay_server(remote, init.instructions)
        async with stdio_server() as (stdin, stdout):
            await server.run(stdin, stdout, server.create_initialization_options())


def run_stdio(url: str, api_key: str | None) -> int:
    """Blocking entry point for the CLI; returns the exit code."""
    if not api_key:
        print("agentfactory mcp: an API key is needed (--api-key or AGENTFACTORY_API_KEY)", file=sys.stderr)
        return EXIT_USAGE
    try:
        anyio.run(serve_stdio, url, api_key)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # the SDK reports a refused connection or key inside exception groups
        print(f"agentfactory mcp: the relay to {url}/mcp stopped: {_first_cause(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def _first_cause(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
