"""`agentfactory`: the server (`serve`, `reap`) and its client (`run`, `logs`, `status`, ...), SPEC §7.

This module is the Typer app, its global options and the console entry point `main()`; the commands
live in `client_commands` (HTTP through `agentfactory.client`) and `server_commands` (which import the
server stack only when run), and everything printed goes through `render`.

Exit codes: 0 ok; for `run --follow` the agent's verdict (0 succeeded, its exit code when failed,
124 expired, 130 cancelled); 1 other errors; 2 usage or validation (400/401/403/409/413/422);
3 server unreachable; 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from agentfactory import __version__
from agentfactory.cli import client_commands, server_commands
from agentfactory.cli.options import EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, ClientConfig, CliError
from agentfactory.cli.render import api_message
from agentfactory.client import ApiError, ServerUnreachable

DEFAULT_URL = "http://127.0.0.1:8000"
_USAGE_STATUSES = {400, 401, 403, 409, 413, 422}

app = typer.Typer(
    name="agentfactory",
    help="Launch short-lived sandboxed AI agents and follow them (server and client).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
keys_app = typer.Typer(help="Manage API keys (admin key required).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"agentfactory {__version__}\n")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="AGENTFACTORY_URL", help="server address", metavar="URL")] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="AGENTFACTORY_API_KEY", help="API key", show_default=False, metavar="KEY"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each request", metavar="SECONDS")] = 30.0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    ctx.obj = ClientConfig(url=url, api_key=api_key or None, timeout=timeout)


app.command()(client_commands.run)
app.command()(client_commands.logs)
app.command()(client_commands.status)
app.command("ls")(client_commands.list_agents)
app.command()(client_commands.rm)
app.command()(client_commands.ttl)
app.command()(client_commands.result)
app.command()(client_commands.catalog)
keys_app.command("create")(client_commands.keys_create)
keys_app.command("list")(client_commands.keys_list)
keys_app.command("revoke")(client_commands.keys_revoke)
app.command()(server_commands.serve)
app.command()(server_commands.reap)
app.command()(server_commands.mcp)


def main() -> None:
    """Console entry point: runs the Typer app; turns every expected failure into one line on stderr."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        app(prog_name="agentfactory")
    except ApiError as exc:
        _fail(api_message(exc), EXIT_USAGE if exc.status in _USAGE_STATUSES else EXIT_ERROR)
    except ServerUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except CliError as exc:
        _fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_ERROR)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
