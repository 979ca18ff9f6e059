"""`agentfactory`: the server (`serve`, `reap`, `db upgrade`) and its client (`run`, `logs`, `events`...), SPEC §7.

This module is the Typer app, its global options and the console entry point `main()`; the commands
live in `client_commands`, `key_commands` and `event_commands` (HTTP through `agentfactory.client`), `context_commands`
(the config file) and `server_commands` (which import the server stack only when run), and everything printed goes
through `render`.

Exit codes (docs/cli.md): 0 ok; for `run --follow` and `wait` the agent's verdict (0 succeeded, its
exit code when failed, 124 expired, 130 cancelled); the CLI's own failures 64-78 (`options`), which no
verdict uses; 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from agentfactory import __version__
from agentfactory.cli import client_commands, context_commands, event_commands, key_commands, server_commands
from agentfactory.cli.options import (
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_SOFTWARE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ClientConfig,
    CliError,
    exit_code_for,
)
from agentfactory.cli.render import api_message
from agentfactory.client import ApiError, ServerUnreachable

# Click's exception classes, wherever this Typer keeps them (newer releases vendor Click as typer._click).
_CLICK_ERRORS = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError: type[Exception] = _CLICK_ERRORS["UsageError"]
ClickException: type[Exception] = _CLICK_ERRORS["ClickException"]

app = typer.Typer(
    name="agentfactory",
    help="Launch short-lived sandboxed AI agents and follow them (server and client).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
keys_app = typer.Typer(help="Manage API keys (admin key required).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
app.add_typer(context_commands.context_app, name="context")
app.add_typer(server_commands.db_app, name="db")
webhooks_app = typer.Typer(help="Signed webhooks of your key's agent events.", no_args_is_help=True,
                           rich_markup_mode=None)  # fmt: skip
app.add_typer(webhooks_app, name="webhooks")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"agentfactory {__version__}\n")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTFACTORY_URL",
            help="server address [default: the context's, else http://127.0.0.1:8000]",
            metavar="URL",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="AGENTFACTORY_API_KEY", help="API key", show_default=False, metavar="KEY"),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTFACTORY_CONTEXT",
            help="a saved server and key (agentfactory login)",
            show_default=False,
            metavar="NAME",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each request", metavar="SECONDS")] = 30.0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    ctx.obj = ClientConfig(url=url or None, api_key=api_key or None, timeout=timeout, context=context or None)


app.command()(client_commands.run)
app.command()(client_commands.logs)
app.command()(client_commands.status)
app.command("ls")(client_commands.list_agents)
app.command()(client_commands.wait)
app.command()(client_commands.rm)
app.command()(client_commands.ttl)
app.command()(client_commands.result)
app.command()(client_commands.artifacts)
app.command()(key_commands.catalog)
keys_app.command("create")(key_commands.keys_create)
keys_app.command("list")(key_commands.keys_list)
keys_app.command("revoke")(key_commands.keys_revoke)
app.command()(event_commands.events)
webhooks_app.command("create")(event_commands.webhooks_create)
webhooks_app.command("list")(event_commands.webhooks_list)
webhooks_app.command("rm")(event_commands.webhooks_rm)
webhooks_app.command("deliveries")(event_commands.webhooks_deliveries)
webhooks_app.command("retry")(event_commands.webhooks_retry)
app.command()(server_commands.serve)
app.command()(server_commands.reap)
app.command()(server_commands.mcp)
app.command()(context_commands.login)


def main() -> None:
    """Console entry point: runs the Typer app; turns every expected failure into one line on stderr
    and the exit code of the table in `options`."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        code = app(prog_name="agentfactory", standalone_mode=False)
    except (UsageError, ClickException) as exc:  # bad usage: Click would exit 2, a code an agent uses
        exc.show()  # type: ignore[attr-defined]
        sys.exit(EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("\n")
        sys.exit(EXIT_INTERRUPTED)
    except ApiError as exc:
        _fail(api_message(exc), exit_code_for(exc))
    except ServerUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except CliError as exc:
        _fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_IO)
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_SOFTWARE)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
