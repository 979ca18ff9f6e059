"""What every command shares: exit codes, `CliError`, the client settings, argument parsers and option types."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

import typer

from agentfactory.client import ApiClient

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CliError(Exception):
    """An expected failure: `main()` prints it as one `error:` line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ClientConfig:
    """The global options (`--url`, `--api-key`, `--timeout`), kept in the Typer context's `obj`."""

    url: str
    api_key: str | None
    timeout: float


def api_client(ctx: typer.Context) -> ApiClient:
    config: ClientConfig = ctx.obj
    return ApiClient(config.url, config.api_key, timeout=config.timeout)


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
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON output")]
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="agent id")]
