"""`agentfactory`: the server (`serve`, `reap`) and its client (`run`, `logs`, `status`, ...), SPEC §7.

Client commands talk HTTP through `agentfactory.client`; the server stack is imported only by the
server commands. Exit codes: 0 ok; for `run --follow` the agent's verdict (0 succeeded, its exit code
when failed, 124 expired, 130 cancelled); 1 other errors; 2 usage or validation (400/401/403/409/413/422);
3 server unreachable; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from agentfactory import __version__
from agentfactory.client import (
    MAX_LOG_PAGE,
    AgentFollower,
    ApiClient,
    ApiError,
    ClientError,
    ServerUnreachable,
    agent_exit_code,
)

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130
_USAGE_STATUSES = {400, 401, 403, 409, 413, 422}
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

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


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ClientConfig:
    url: str
    api_key: str | None
    timeout: float


# --- argument parsing ------------------------------------------------------------------------------


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


def _split_list(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


# --- output ----------------------------------------------------------------------------------------


def _console() -> Console:
    # Not a terminal: no colour, and no width limit so that piped tables never truncate ids.
    return Console(width=None if sys.stdout.isatty() else 1000, highlight=False)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _when(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _age(seconds: float) -> str:
    seconds = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ago(value: Any) -> str:
    moment = _when(value)
    return _age(time.time() - moment.timestamp()) if moment else "-"


def _cell(key: str, value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if key.endswith("_at") and (moment := _when(value)) is not None:
        delta = moment.timestamp() - time.time()
        relative = f"in {_age(delta)}" if delta > 0 else f"{_age(delta)} ago"
        return f"{moment.strftime('%Y-%m-%d %H:%M:%S')}Z ({relative})"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, dict) and value and key not in ("metadata", "env"):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _print_fields(doc: dict[str, Any], first: tuple[str, ...] = (), skip: tuple[str, ...] = ("links",)) -> None:
    ordered = {k: doc[k] for k in first if k in doc} | {k: v for k, v in doc.items() if k not in skip}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in _flatten(ordered):
        table.add_row(key, _cell(key, value))
    _console().print(table)


def _print_table(columns: list[str], rows: list[list[str]]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, no_wrap=name in ("ID", "NAME"), overflow="fold")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


AGENT_FIELDS = (
    *("id", "status", "reason", "exit_code", "error", "model", "tools", "created_at", "started_at"),
    *("finished_at", "expires_at", "ttl_seconds", "metadata", "log_lines", "log_bytes", "log_sha256"),
)


# --- following -------------------------------------------------------------------------------------


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job being cancelled) is handled like Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Terminated()


class FollowOutput:
    """Writes an agent's lines (stdout→stdout, stderr→stderr) and, on a terminal stderr only, a live
    status line kept below them. With `json_lines`, every event is one JSON object on stdout."""

    def __init__(
        self,
        agent_id: str,
        *,
        json_lines: bool,
        streams: tuple[str, ...] = ("stdout", "stderr"),
        live: bool = False,
    ):
        self.agent_id, self.json_lines, self.streams = agent_id, json_lines, streams
        self.live = live and not json_lines
        self.state, self.lines, self.started = "connecting", 0, time.monotonic()
        self._lock = threading.Lock()
        self._shown = False
        self._stop = threading.Event()
        if self.live:
            threading.Thread(target=self._refresh, name="af-status-line", daemon=True).start()

    def line(self, line: dict[str, Any]) -> None:
        self.lines += 1
        if line.get("stream", "stdout") not in self.streams:
            return
        if self.json_lines:
            return self.event("log", **line)
        out = sys.stderr if line.get("stream") == "stderr" else sys.stdout
        with self._lock:
            self._erase()
            out.write(f"{line.get('text', '')}\n")
            out.flush()

    def event(self, name: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": name, **fields}, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def status(self, agent: dict[str, Any]) -> None:
        self.state = str(agent.get("status"))
        if self.json_lines:
            self.event("status", agent=agent)

    def retry(self, attempt: int, delay: float, cause: str) -> None:
        self.state = f"reconnecting in {delay:.1f}s (attempt {attempt}: {cause})"

    def note(self, message: str) -> None:
        with self._lock:
            self._erase()
            sys.stderr.write(f"agentfactory: {message}\n")
            sys.stderr.flush()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._erase()

    def _erase(self) -> None:
        if self._shown:
            sys.stdout.flush()
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._shown = False

    def _refresh(self) -> None:
        spinner = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
        tick = 0
        while not self._stop.wait(0.2):
            elapsed = _age(time.monotonic() - self.started)
            spin = spinner[tick % len(spinner)]
            text = f"{spin} {self.agent_id} {self.state} · {self.lines} lines · {elapsed}"
            try:  # one terminal row at most: a wrapped status line could not be erased
                text = text[: max(10, os.get_terminal_size(sys.stderr.fileno()).columns - 1)]
            except OSError:
                text = text[:79]
            tick += 1
            with self._lock:
                if self._stop.is_set():
                    return
                sys.stdout.flush()
                sys.stderr.write(f"\r\x1b[2K\x1b[2m{text}\x1b[0m")
                sys.stderr.flush()
                self._shown = True


def follow_agent(
    client: ApiClient,
    agent_id: str,
    *,
    json_lines: bool,
    tail: int | None = None,
    streams: tuple[str, ...] = ("stdout", "stderr"),
    cancel_on_interrupt: bool = False,
) -> dict[str, Any] | None:
    """Streams the agent to its end; returns the terminal agent, or None when interrupted and detached."""
    out = FollowOutput(agent_id, json_lines=json_lines, streams=streams, live=sys.stderr.isatty())
    follower = AgentFollower(client, agent_id, on_line=out.line, on_status=out.status, on_retry=out.retry, tail=tail)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            agent = follower.run()
        except KeyboardInterrupt:
            if not cancel_on_interrupt:
                return None
            out.note(f"cancelling {agent_id} (interrupt again to leave it running)")
            try:
                client.delete_agent(agent_id)
                agent = follower.run(max_seconds=10)
            except KeyboardInterrupt:
                out.note(f"left {agent_id} to finish cancelling on the server")
                return None
            except ClientError as exc:
                out.note(f"could not confirm that {agent_id} stopped: {exc}")
                return None
        except ServerUnreachable as exc:
            raise CliError(
                f"lost {exc.url} while following {agent_id} ({exc.cause}); "
                f"it may still be running: agentfactory logs -f {agent_id}",
                EXIT_UNREACHABLE,
            ) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        out.close()
    if json_lines:
        out.event("end", agent=agent)
    elif agent.get("status") != "succeeded":
        detail = f"exit code {agent.get('exit_code')}, reason {agent.get('reason') or '-'}"
        error = f": {agent['error']}" if agent.get("error") else ""
        out.note(f"agent {agent_id} {agent.get('status')} ({detail}){error}")
    return agent


# --- commands --------------------------------------------------------------------------------------


def _client(ctx: typer.Context) -> ApiClient:
    config: ClientConfig = ctx.obj
    return ApiClient(config.url, config.api_key, timeout=config.timeout)


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


DurationOption = Annotated[int | None, typer.Option("--ttl", parser=parse_duration, metavar="DURATION",
                                                     help="time to live: 90, 90s, 10m, 1h")]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON output")]
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="agent id")]


@app.command()
def run(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="the prompt, or - to read it from stdin", metavar="PROMPT")],
    model: Annotated[str, typer.Option("--model", "-m", help="model id from the catalog", metavar="MODEL")],
    tool: Annotated[
        list[str] | None, typer.Option("--tool", "-t", help="tool id (repeat, or a,b)", metavar="TOOL")
    ] = None,
    ttl: DurationOption = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE for the agent", metavar="KEY=VALUE")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(help="secret KEY=VALUE (masked in output; prefer --secret-env)", metavar="KEY=VALUE"),
    ] = None,
    secret_env: Annotated[
        list[str] | None, typer.Option(help="secret KEY taken from this shell's env", metavar="KEY")
    ] = None,
    meta: Annotated[list[str] | None, typer.Option(help="metadata key=value", metavar="KEY=VALUE")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="same key + body → same agent", metavar="KEY")] = None,
    token_budget: Annotated[int | None, typer.Option(min=1, help="max model tokens", metavar="TOKENS")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream output; exit with the verdict")] = False,
    detach_on_interrupt: Annotated[
        bool, typer.Option("--detach-on-interrupt", help="Ctrl-C leaves the agent running")
    ] = False,
    result_file: Annotated[
        Path | None, typer.Option(help="with --follow: write the result JSON here", metavar="PATH")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create an agent; print its id, or with --follow stream its output and exit with its verdict."""
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise typer.BadParameter("the prompt is empty", param_hint="PROMPT")
    secrets = parse_pairs(secret, "--secret")
    for name in secret_env or []:
        if name not in os.environ:
            raise typer.BadParameter(f"{name} is not set in the environment", param_hint="--secret-env")
        secrets[name] = os.environ[name]
    body: dict[str, Any] = {"model": model, "prompt": text}
    body |= {"tools": _split_list(tool), "ttl_seconds": ttl, "env": parse_pairs(env, "--env")}
    body |= {"secrets": secrets, "metadata": parse_pairs(meta, "--meta"), "token_budget": token_budget}
    body = {k: v for k, v in body.items() if v not in (None, [], {})}
    with _client(ctx) as client:
        # A key of our own makes the POST safe to retry when the connection breaks mid-request.
        agent = client.create_agent(body, idempotency_key=idempotency_key or f"cli-{uuid.uuid4()}")
        agent_id = agent["id"]
        if not follow:
            _print_json(agent) if json_out else sys.stdout.write(f"{agent_id}\n")
            return
        if json_out:
            FollowOutput(agent_id, json_lines=True).event("created", agent=agent)
        final = follow_agent(client, agent_id, json_lines=json_out, cancel_on_interrupt=not detach_on_interrupt)
        if final is None:
            raise typer.Exit(EXIT_INTERRUPTED)
        if result_file is not None:
            result_file.write_text(json.dumps(client.get_result(agent_id), indent=2) + "\n")
    raise typer.Exit(agent_exit_code(final))


@app.command()
def logs(
    ctx: typer.Context,
    agent_id: IdArgument,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the agent ends")] = False,
    tail: Annotated[int | None, typer.Option(min=0, help="only the last N lines", metavar="N")] = None,
    stream: Annotated[str | None, typer.Option(help="stdout or stderr only", metavar="STREAM")] = None,
    json_out: JsonOption = False,
) -> None:
    """Print an agent's captured output (stdout lines to stdout, stderr lines to stderr)."""
    if stream not in (None, "stdout", "stderr"):
        raise typer.BadParameter("must be stdout or stderr", param_hint="--stream")
    streams = (stream,) if stream else ("stdout", "stderr")
    with _client(ctx) as client:
        if follow:
            client.get_agent(agent_id)  # an unknown id, a bad key or a down server fail now, not in 60 s
            final = follow_agent(client, agent_id, json_lines=json_out, tail=tail, streams=streams)
            raise typer.Exit(EXIT_INTERRUPTED if final is None else 0)
        out = FollowOutput(agent_id, json_lines=False, streams=streams)
        kept: deque[dict[str, Any]] = deque(maxlen=tail)
        cursor, complete = None, False
        while True:
            page = client.get_logs(agent_id, cursor=cursor, limit=MAX_LOG_PAGE, stream=stream)
            lines = page.get("lines") or []
            complete = bool(page.get("complete"))
            for line in lines:
                kept.append(line) if json_out or tail is not None else out.line(line)
            if not lines or complete or page.get("next_cursor") is None:
                break
            cursor = page["next_cursor"]
        if json_out:
            last = str(kept[-1]["seq"]) if kept else cursor
            _print_json({"lines": list(kept), "next_cursor": last, "complete": complete})
        else:
            for line in kept:
                out.line(line)


@app.command()
def status(ctx: typer.Context, agent_id: IdArgument, json_out: JsonOption = False) -> None:
    """Show one agent."""
    with _client(ctx) as client:
        agent = client.get_agent(agent_id)
    _print_json(agent) if json_out else _print_fields(agent, AGENT_FIELDS)


@app.command("ls")
def list_agents(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="only agents in this status", metavar="STATUS")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="page size", metavar="N")] = 50,
    cursor: Annotated[str | None, typer.Option(help="continue from a previous page", metavar="CURSOR")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="follow every page")] = False,
    json_out: JsonOption = False,
) -> None:
    """List your agents, newest first."""
    items: list[dict[str, Any]] = []
    with _client(ctx) as client:
        while True:
            page = client.list_agents(status=status, limit=limit, cursor=cursor)
            items += page.get("items") or []
            cursor = page.get("next_cursor")
            if not all_pages or not cursor:
                break
    if json_out:
        return _print_json({"items": items, "next_cursor": cursor})
    rows = [
        [a["id"], str(a.get("status")), str(a.get("model")), _cell("tools", a.get("tools")), _ago(a.get("created_at")),
         _cell("exit_code", a.get("exit_code")), _cell("reason", a.get("reason"))]
        for a in items
    ]  # fmt: skip
    _print_table(["ID", "STATUS", "MODEL", "TOOLS", "AGE", "EXIT", "REASON"], rows)
    if cursor:
        sys.stderr.write(f"more: agentfactory ls --cursor {cursor}\n")


@app.command()
def rm(ctx: typer.Context, agent_ids: Annotated[list[str], typer.Argument(metavar="ID...")]) -> None:
    """Stop agents now (status cancelled); a finished agent is left as it is."""
    failed = 0
    with _client(ctx) as client:
        for agent_id in agent_ids:
            try:
                agent = client.delete_agent(agent_id)
            except ApiError as exc:
                failed += 1
                sys.stderr.write(f"error: {agent_id}: {_api_message(exc)}\n")
                continue
            sys.stdout.write(f"{agent_id}\t{agent.get('status')}\n")
    if failed:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def ttl(
    ctx: typer.Context,
    agent_id: IdArgument,
    duration: Annotated[int, typer.Argument(parser=parse_duration, metavar="DURATION", help="from now")],
    json_out: JsonOption = False,
) -> None:
    """Set a running agent's time to live: it expires DURATION from now."""
    with _client(ctx) as client:
        agent = client.set_ttl(agent_id, duration)
    if json_out:
        return _print_json(agent)
    sys.stdout.write(f"{agent_id}\texpires_at {_cell('expires_at', agent.get('expires_at'))}\n")


@app.command()
def result(ctx: typer.Context, agent_id: IdArgument, json_out: JsonOption = False) -> None:
    """The result document of an agent: verdict, timings, usage and log seal."""
    with _client(ctx) as client:
        doc = client.get_result(agent_id)
    _print_json(doc) if json_out else _print_fields(doc, ("id", "status", "reason", "exit_code", "error"))


@app.command()
def catalog(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """The models and tools this server offers, and its limits."""
    with _client(ctx) as client:
        doc = client.get_catalog()
    if json_out:
        return _print_json(doc)
    models = [[m.get("id", "?"), m.get("provider", "-"), m.get("description", "")] for m in doc.get("models", [])]
    _print_table(["MODEL", "PROVIDER", "DESCRIPTION"], models)
    sys.stdout.write("\n")
    tools = [[t.get("id", "?"), "yes" if t.get("network") else "no", t.get("description", "")]
             for t in doc.get("tools", [])]  # fmt: skip
    _print_table(["TOOL", "NETWORK", "DESCRIPTION"], tools)
    if limits := doc.get("limits"):
        sys.stdout.write("\nlimits: " + ", ".join(f"{k}={v}" for k, v in limits.items()) + "\n")


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="may manage keys")] = False,
    model: Annotated[list[str] | None, typer.Option(help="allowed model (repeat; none = all)", metavar="MODEL")] = None,
    tool: Annotated[list[str] | None, typer.Option(help="allowed tool (repeat; none = all)", metavar="TOOL")] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1, metavar="N")] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="max requests per minute", metavar="N")] = None,
    max_ttl: Annotated[int | None, typer.Option(parser=parse_duration, metavar="DURATION")] = None,
    max_streams: Annotated[
        int | None, typer.Option(min=1, help="max concurrent log streams and MCP waits", metavar="N")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create an API key; its secret is printed once."""
    body: dict[str, Any] = {
        "name": name,
        "admin": admin,
        "models": _split_list(model),
        "tools": _split_list(tool),
    }
    limits = {
        "max_concurrent_agents": max_concurrent,
        "max_requests_per_minute": rpm,
        "max_ttl_seconds": max_ttl,
        "max_streams": max_streams,
    }
    body |= {k: v for k, v in limits.items() if v is not None}
    with _client(ctx) as client:
        key = client.create_key(body)
    if json_out:
        return _print_json(key)
    sys.stdout.write(f"{key.get('key')}\n")
    sys.stderr.write(f"created {key.get('id')} ({name}); the key above is shown only this once\n")


@keys_app.command("list")
def keys_list(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List API keys and their quotas."""
    with _client(ctx) as client:
        doc = client.list_keys()
    if json_out:
        return _print_json(doc)
    items = doc.get("items", []) if isinstance(doc, dict) else doc
    headers = ["ID", "NAME", "PREFIX", "ADMIN", "MODELS", "TOOLS", "MAX AGENTS", "RPM", "MAX TTL", "AGE", "REVOKED"]
    rows = [
        [k["id"], str(k.get("name")), str(k.get("prefix") or "-"), "yes" if k.get("admin") else "no",
         _cell("models", k.get("models") or ["*"]), _cell("tools", k.get("tools") or ["*"]),
         *(_cell(c, k.get(c)) for c in ("max_concurrent_agents", "max_requests_per_minute", "max_ttl_seconds")),
         _ago(k.get("created_at")), _ago(k.get("revoked_at")) if k.get("revoked_at") else "-"]
        for k in items
    ]  # fmt: skip
    _print_table(headers, rows)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke an API key: it is refused from now on."""
    with _client(ctx) as client:
        client.revoke_key(key_id)
    sys.stdout.write(f"{key_id}\trevoked\n")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address [env AGENTFACTORY_HOST]", metavar="HOST")] = None,
    port: Annotated[int | None, typer.Option(help="bind port [env AGENTFACTORY_PORT]", metavar="PORT")] = None,
) -> None:
    """Run the control plane (settings from AGENTFACTORY_* variables)."""
    from agentfactory.server import serve as serve_forever
    from agentfactory.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    serve_forever(Settings().model_copy(update=overrides))


@app.command()
def reap(once: Annotated[bool, typer.Option("--once", help="one reaper pass, then exit")] = False) -> None:
    """Run one reaper pass (expire agents past their TTL, reconcile containers) and exit."""
    if not once:
        raise CliError("only `reap --once` is supported; `serve` runs the reaper continuously", EXIT_USAGE)
    from agentfactory.server import reap_once
    from agentfactory.settings import Settings

    reap_once(Settings())


@app.command("mcp")
def mcp_command(
    ctx: typer.Context,
    stdio: Annotated[bool, typer.Option("--stdio", help="serve MCP on stdin/stdout")] = False,
) -> None:
    """MCP for hosts that only speak stdio: relays to the server's /mcp as your API key."""
    if not stdio:
        raise CliError("only `mcp --stdio`; hosts that speak HTTP use <url>/mcp directly", EXIT_USAGE)
    from agentfactory.mcp.stdio import run_stdio

    config: ClientConfig = ctx.obj
    raise typer.Exit(run_stdio(config.url, config.api_key))


# --- entry point -----------------------------------------------------------------------------------


def _detail(detail: Any) -> str | None:
    """The part of one error detail a person needs (the message already names the first problem)."""
    if not isinstance(detail, dict):
        return None
    if "msg" in detail:
        where = ".".join(str(p) for p in detail.get("loc", []) if p != "body")
        return f"{where}: {detail['msg']}" if where else str(detail["msg"])
    for key in ("known", "allowed"):
        if isinstance(detail.get(key), list):
            return f"{key}: {', '.join(str(v) for v in detail[key])}"
    return None


def _api_message(exc: ApiError) -> str:
    text = f"{exc.code}: {exc.message} ({exc.status})"
    details = exc.details if isinstance(exc.details, list) else []
    parts = [p for p in map(_detail, details[:5]) if p and p not in exc.message]
    if parts:
        text += " — " + "; ".join(parts)[:400]
    if exc.retry_after:
        text += f"; retry after {exc.retry_after}s"
    if exc.status >= 500 and exc.request_id:
        text += f" [request {exc.request_id}]"
    if exc.hint:
        text += f"; {exc.hint}"
    return text


def main() -> None:
    """Console entry point: runs the Typer app; turns every expected failure into one line on stderr."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        app(prog_name="agentfactory")
    except ApiError as exc:
        _fail(_api_message(exc), EXIT_USAGE if exc.status in _USAGE_STATUSES else EXIT_ERROR)
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


if __name__ == "__main__":
    main()
