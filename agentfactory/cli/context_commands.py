"""`agentfactory login` and `agentfactory context ls|use|rm`: named servers and keys in the config file
(`agentfactory.contexts`, `~/.config/agentfactory/config.toml`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agentfactory.cli.options import EXIT_CONFIG, ClientConfig, CliError
from agentfactory.cli.render import print_table
from agentfactory.client import ApiClient
from agentfactory.contexts import DEFAULT_URL, ConfigError, Context, check_name, load_config

context_app = typer.Typer(
    help="Named servers and keys (~/.config/agentfactory/config.toml).", no_args_is_help=True, rich_markup_mode=None
)


def _config_error(exc: ConfigError) -> CliError:
    return CliError(str(exc), EXIT_CONFIG)


def login(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="the context's name", metavar="NAME")] = "default",
    key_stdin: Annotated[bool, typer.Option("--api-key-stdin", help="read the key from stdin")] = False,
) -> None:
    """Check a server and key, save them as a context and make it the current one.

    The server is --url (or AGENTFACTORY_URL, default http://127.0.0.1:8000); the key is --api-key,
    AGENTFACTORY_API_KEY, --api-key-stdin, or asked for (hidden) on a terminal.
    """
    config: ClientConfig = ctx.obj
    url = (config.url or DEFAULT_URL).rstrip("/")
    api_key = config.api_key
    if key_stdin:
        api_key = sys.stdin.readline().strip()
    elif not api_key:
        if not sys.stdin.isatty():
            raise typer.BadParameter("no key: pass --api-key, --api-key-stdin or AGENTFACTORY_API_KEY")
        api_key = typer.prompt(f"API key for {url}", hide_input=True).strip()
    if not api_key:
        raise typer.BadParameter("the key is empty", param_hint="--api-key")
    try:
        check_name(name)
        stored = load_config()
    except ConfigError as exc:
        raise _config_error(exc) from exc
    with ApiClient(url, api_key, timeout=config.timeout) as client:
        client.list_agents(limit=1)  # any key may list its own agents: proves the URL and the key
    stored.contexts[name] = Context(name=name, url=url, api_key=api_key)
    stored.current = name
    try:
        stored.save()
    except OSError as exc:
        raise CliError(f"cannot write {stored.path}: {exc.strerror or exc}", EXIT_CONFIG) from exc
    sys.stdout.write(f"logged in to {url} as context {name!r} (saved in {stored.path})\n")


@context_app.command("ls")
def context_list() -> None:
    """The saved contexts; * marks the current one."""
    try:
        config = load_config()
    except ConfigError as exc:
        raise _config_error(exc) from exc
    rows = [
        ["*" if c.name == config.current else "", c.name, c.url, "yes" if c.api_key else "no"]
        for c in config.contexts.values()
    ]
    print_table(["CURRENT", "NAME", "URL", "KEY"], rows)


@context_app.command("use")
def context_use(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Make NAME the current context."""
    try:
        config = load_config()
        config.get(name)
        config.current = name
        config.save()
    except ConfigError as exc:
        raise _config_error(exc) from exc
    sys.stdout.write(f"current context: {name}\n")


@context_app.command("rm")
def context_remove(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Forget the context NAME (and its key)."""
    try:
        config = load_config()
        config.get(name)
        del config.contexts[name]
        if config.current == name:
            config.current = None
        config.save()
    except ConfigError as exc:
        raise _config_error(exc) from exc
    sys.stdout.write(f"removed context {name}\n")
