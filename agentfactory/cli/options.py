"""What every command shares: exit codes, `CliError`, the client settings, argument parsers and option types."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

import typer

from agentfactory.client import ApiClient
from agentfactory.client_errors import ApiError

# The exit codes (docs/cli.md has the table). 0 is success; an agent's verdict (`run --follow`, `wait`)
# is 0, its own exit code when it failed (1-63, 128-255), 124 expired or 130 cancelled. The CLI's own
# failures use sysexits.h's 64-78, which no verdict uses (`client.agent_exit_code` maps an agent's
# exit code in that range to 1), so a CI script can tell "the agent failed" from "the CLI could not ask".
EXIT_USAGE = 64  # EX_USAGE: bad command line (unknown option, bad value)
EXIT_REFUSED = 65  # EX_DATAERR: the server refused the request (400, 409, 413, 422)
EXIT_NOT_FOUND = 66  # EX_NOINPUT: no such agent or key (404)
EXIT_UNREACHABLE = 69  # EX_UNAVAILABLE: no answer from the server, or the engine is down (503)
EXIT_SOFTWARE = 70  # EX_SOFTWARE: the server failed (500) or the CLI hit a bug
EXIT_IO = 74  # EX_IOERR: cannot write the output (closed pipe, a --result-file that cannot be written)
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: try again later (429 quota or rate limit, `wait --timeout` ran out)
EXIT_AUTH = 77  # EX_NOPERM: no, unknown or revoked key (401), or the key may not do this (403)
EXIT_CONFIG = 78  # EX_CONFIG: bad config file or context; the server extra is not installed
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM left the command (128 + SIGINT, as shells report it)
EXIT_ERROR = EXIT_SOFTWARE

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def exit_code_for(exc: ApiError) -> int:
    """The CLI's exit code for an error answer (the table above)."""
    if exc.status in (401, 403):
        return EXIT_AUTH
    if exc.status == 404:
        return EXIT_NOT_FOUND
    if exc.status == 429:
        return EXIT_TEMPFAIL
    if exc.status in (502, 503, 504):
        return EXIT_UNREACHABLE
    if 400 <= exc.status < 500:
        return EXIT_REFUSED
    return EXIT_SOFTWARE


class CliError(Exception):
    """An expected failure: `main()` prints it as one `error:` line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_SOFTWARE):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ClientConfig:
    """The global options (`--url`, `--api-key`, `--context`, `--timeout`), kept in the Typer context's
    `obj`; url and key are resolved through `agentfactory.contexts` when a command needs them."""

    url: str | None
    api_key: str | None
    timeout: float
    context: str | None = None


def resolved(config: ClientConfig) -> tuple[str, str | None]:
    from agentfactory.contexts import ConfigError, resolve

    try:
        where = resolve(config.url, config.api_key, context=config.context)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from exc
    return where.url, where.api_key


def api_client(ctx: typer.Context) -> ApiClient:
    config: ClientConfig = ctx.obj
    url, api_key = resolved(config)
    return ApiClient(url, api_key, timeout=config.timeout)


def parse_duration(text: str) -> int:
    """`90`, `90s`, `10m`, `1h`, `1h30m`, `2d` → seconds (a positive integer)."""
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    elif value and _DURATION.sub("", value) == "":
        seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(value))
    else:
        raise typer.BadParameter(f"{text!r} is not a duration (examples: 90, 90s, 10m, 1h, 1h30m)")
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r}: a duration must be positive")
    return seconds


def parse_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=what)
        pairs[key] = value
    return pairs


def split_list(values: list[str] | None) -> list[str]:
    """Repeated options that may also be comma-separated: `-t a,b -t c` → `[a, b, c]`."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


DurationOption = Annotated[int | None, typer.Option("--ttl", parser=parse_duration, metavar="DURATION",
                                                     help="time to live: 90, 90s, 10m, 1h")]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON output (= -o json)")]
OutputOption = Annotated[
    str | None, typer.Option("--output", "-o", help="json, yaml, wide or name", metavar="FORMAT", show_default=False)
]
OUTPUT_FORMATS = ("json", "yaml", "wide", "name")
# The commands whose result is a document, not agents (`logs`, `artifacts`, `events`, `catalog`...).
DocOutputOption = Annotated[
    str | None, typer.Option("--output", "-o", help="json or yaml", metavar="FORMAT", show_default=False)
]
DOC_FORMATS = ("json", "yaml")


def output_format(output: str | None, json_out: bool, formats: tuple[str, ...] = OUTPUT_FORMATS) -> str | None:
    """`-o FORMAT` (or `--json`), checked against the `formats` this command prints (a usage error,
    exit 64, otherwise); None: the human table."""
    if output is not None and output not in formats:
        raise typer.BadParameter(f"{output!r}: one of {', '.join(formats)}", param_hint="-o/--output")
    if json_out:
        if output not in (None, "json"):
            raise typer.BadParameter("--json and -o differ", param_hint="-o/--output")
        return "json"
    return output


def parse_selector(values: list[str] | None) -> dict[str, str]:
    """`-l ci_run=42 -l job=lint` or `-l ci_run=42,job=lint` → {"ci_run": "42", "job": "lint"}."""
    return parse_pairs([part for value in values or [] for part in value.split(",") if part.strip()], "-l/--selector")


SelectorOption = Annotated[
    list[str] | None,
    typer.Option("--selector", "-l", help="metadata KEY=VALUE the agents must have (repeat, or a=1,b=2)",
                 metavar="KEY=VALUE"),
]  # fmt: skip
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="agent id")]
