"""The commands that run the server side: `serve`, `reap --once`, `db upgrade`, and `mcp --stdio`.

Each imports what it runs inside its function body, so that the client commands, which share the
process's start-up, never load FastAPI, SQLAlchemy, docker-py or the MCP SDK; and so that an install
without the server (`pip install agentfactory`) says which extra to add instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Annotated

import typer

from agentfactory.cli.options import EXIT_CONFIG, EXIT_UNREACHABLE, EXIT_USAGE, ClientConfig, CliError, resolved

db_app = typer.Typer(help="The control plane's database (server extra).", no_args_is_help=True, rich_markup_mode=None)


def server_module(name: str, *, extra: str = "server") -> ModuleType:
    """Imports a module of the server side, or explains which extra this install lacks."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if missing.split(".")[0] == "agentfactory":
            raise
        raise CliError(
            f"this needs the agentfactory server, which is not installed here (no module {missing!r}): "
            f"pip install 'agentfactory[{extra}]'",
            EXIT_CONFIG,
        ) from exc


def serve(
    host: Annotated[str | None, typer.Option(help="bind address [env AGENTFACTORY_HOST]", metavar="HOST")] = None,
    port: Annotated[int | None, typer.Option(help="bind port [env AGENTFACTORY_PORT]", metavar="PORT")] = None,
) -> None:
    """Run the control plane (settings from AGENTFACTORY_* variables)."""
    server = server_module("agentfactory.server")
    settings = server_module("agentfactory.settings").Settings()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    server.serve(settings.model_copy(update=overrides))


def reap(once: Annotated[bool, typer.Option("--once", help="one reaper pass, then exit")] = False) -> None:
    """Run one reaper pass (expire agents past their TTL, reconcile containers) and exit."""
    if not once:
        raise CliError("only `reap --once` is supported; `serve` runs the reaper continuously", EXIT_USAGE)
    server = server_module("agentfactory.server")
    server.reap_once(server_module("agentfactory.settings").Settings())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database (AGENTFACTORY_DATABASE_URL) to this version's schema; safe to repeat.

    `serve` does the same at start-up; run this first to upgrade while the old version is stopped,
    or to see the migration's errors on their own. Back the database up before (docs/operations.md).
    """
    settings = server_module("agentfactory.settings").Settings()
    store = server_module("agentfactory.store.engine").Store(settings.database_url)
    try:
        before = store.revision()
        store.migrate()
        after = store.revision()
    except Exception as exc:  # the driver's own errors: a refused connection, a locked file, a bad URL
        raise CliError(f"cannot migrate {_redacted(settings.database_url)}: {exc}", EXIT_UNREACHABLE) from exc
    finally:
        store.dispose()
    verb = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
    sys.stdout.write(f"{_redacted(settings.database_url)}: {verb} revision {after}\n")


def mcp(
    ctx: typer.Context,
    stdio: Annotated[bool, typer.Option("--stdio", help="serve MCP on stdin/stdout")] = False,
) -> None:
    """MCP for hosts that only speak stdio: relays to the server's /mcp as your API key."""
    if not stdio:
        raise CliError("only `mcp --stdio`; hosts that speak HTTP use <url>/mcp directly", EXIT_USAGE)
    relay = server_module("agentfactory.mcp.stdio", extra="mcp")
    url, api_key = resolved(ctx.obj if isinstance(ctx.obj, ClientConfig) else ClientConfig(None, None, 30.0))
    raise typer.Exit(relay.run_stdio(url, api_key))


def _redacted(url: str) -> str:
    """A database URL without its password."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
