"""The commands that run the server side: `serve`, `reap --once`, and `mcp --stdio` (a local MCP relay).

Each imports what it runs inside its function body, so that the client commands, which share the
process's start-up, never load FastAPI, SQLAlchemy, docker-py or the MCP SDK.
"""

from __future__ import annotations

from typing import Annotated

import typer

from agentfactory.cli.options import EXIT_USAGE, ClientConfig, CliError


def serve(
    host: Annotated[str | None, typer.Option(help="bind address [env AGENTFACTORY_HOST]", metavar="HOST")] = None,
    port: Annotated[int | None, typer.Option(help="bind port [env AGENTFACTORY_PORT]", metavar="PORT")] = None,
) -> None:
    """Run the control plane (settings from AGENTFACTORY_* variables)."""
    from agentfactory.server import serve as serve_forever
    from agentfactory.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    serve_forever(Settings().model_copy(update=overrides))


def reap(once: Annotated[bool, typer.Option("--once", help="one reaper pass, then exit")] = False) -> None:
    """Run one reaper pass (expire agents past their TTL, reconcile containers) and exit."""
    if not once:
        raise CliError("only `reap --once` is supported; `serve` runs the reaper continuously", EXIT_USAGE)
    from agentfactory.server import reap_once
    from agentfactory.settings import Settings

    reap_once(Settings())


def mcp(
    ctx: typer.Context,
    stdio: Annotated[bool, typer.Option("--stdio", help="serve MCP on stdin/stdout")] = False,
) -> None:
    """MCP for hosts that only speak stdio: relays to the server's /mcp as your API key."""
    if not stdio:
        raise CliError("only `mcp --stdio`; hosts that speak HTTP use <url>/mcp directly", EXIT_USAGE)
    from agentfactory.mcp.stdio import run_stdio

    config: ClientConfig = ctx.obj
    raise typer.Exit(run_stdio(config.url, config.api_key))
