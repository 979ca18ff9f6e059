"""The client commands (`run`, `logs`, `status`, `ls`, `rm`, `ttl`, `result`, `artifacts`), SPEC §7.

They talk to the server only through `agentfactory.client` and print only through `render`.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer

from agentfactory.cli import files
from agentfactory.cli.following import follow_agent
from agentfactory.cli.options import (
    DOC_FORMATS,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_TEMPFAIL,
    CliError,
    DocOutputOption,
    DurationOption,
    IdArgument,
    JsonOption,
    OutputOption,
    SelectorOption,
    api_client,
    exit_code_for,
    output_format,
    parse_duration,
    parse_pairs,
    parse_selector,
    split_list,
)
from agentfactory.cli.render import (
    FollowOutput,
    ago,
    api_message,
    cell,
    print_doc,
    print_event,
    print_fields,
    print_names,
    print_table,
)
from agentfactory.client import MAX_LOG_PAGE, ApiClient, ApiError, agent_exit_code
from agentfactory.client_errors import WaitTimeout
from agentfactory.vocabulary import TERMINAL

AGENT_FIELDS = (
    *("id", "status", "reason", "exit_code", "error", "model", "tools", "created_at", "started_at"),
    *("finished_at", "expires_at", "ttl_seconds", "metadata", "log_lines", "log_bytes", "log_sha256", "dashboard"),
)

# --- agents ----------------------------------------------------------------------------------------


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
    queue: Annotated[
        int | None,
        typer.Option(
            "--queue",
            parser=parse_duration,
            metavar="DURATION",
            help="when the key or the cluster is full, wait in the queue up to this long (e.g. 10m; at most 1h) "
            "instead of failing with E_QUOTA / E_CAPACITY",
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream output; exit with the verdict")] = False,
    detach_on_interrupt: Annotated[
        bool, typer.Option("--detach-on-interrupt", help="Ctrl-C leaves the agent running")
    ] = False,
    result_file: Annotated[
        Path | None, typer.Option(help="with --follow: write the result JSON here", metavar="PATH")
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(help="upload DIR (without .git and .gitignore'd files) as the agent's workspace", metavar="DIR"),
    ] = None,
    artifact: Annotated[
        list[str] | None,
        typer.Option(help="glob (relative to the workspace) of files to hand back (repeat)", metavar="GLOB"),
    ] = None,
    download: Annotated[
        Path | None,
        typer.Option(help="after the end, download the artifacts here, checked (implies --follow)", metavar="DIR"),
    ] = None,
    json_out: JsonOption = False,
    output: OutputOption = None,
) -> None:
    """Create an agent; print its id, or with --follow stream its output and exit with its verdict."""
    follow = follow or download is not None
    fmt = output_format(output, json_out)
    if follow and fmt not in (None, "json"):
        raise typer.BadParameter("with --follow, only --json (one JSON event per line)", param_hint="-o/--output")
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise typer.BadParameter("the prompt is empty", param_hint="PROMPT")
    secrets = parse_pairs(secret, "--secret")
    for name in secret_env or []:
        if name not in os.environ:
            raise typer.BadParameter(f"{name} is not set in the environment", param_hint="--secret-env")
        secrets[name] = os.environ[name]
    body: dict[str, Any] = {"model": model, "prompt": text}
    body |= {"tools": split_list(tool), "ttl_seconds": ttl, "env": parse_pairs(env, "--env")}
    body |= {"secrets": secrets, "metadata": parse_pairs(meta, "--meta"), "token_budget": token_budget}
    body |= {"artifacts": list(artifact or [])}
    body |= {"queue_timeout_seconds": queue or None}
    body = {k: v for k, v in body.items() if v not in (None, [], {})}
    with api_client(ctx) as client:
        if workspace is not None:
            body["workspace"] = files.upload_workspace(client, workspace)["id"]
        # A key of our own makes the POST safe to retry when the connection breaks mid-request.
        agent = client.create_agent(body, idempotency_key=idempotency_key or f"cli-{uuid.uuid4()}")
        agent_id = agent["id"]
        if not follow:
            if fmt is None and sys.stderr.isatty():  # decorative: only for a person at a terminal
                sys.stderr.write(f"dashboard: {dashboard_url(client.base_url, agent)}\n")
            print_agents([agent], fmt) if fmt in ("json", "yaml", "wide") else sys.stdout.write(f"{agent_id}\n")
            return
        json_lines = fmt == "json"
        if json_lines:
            print_event("created", agent=agent)
        final = follow_agent(client, agent_id, json_lines=json_lines, cancel_on_interrupt=not detach_on_interrupt)
        if final is None:
            raise typer.Exit(EXIT_INTERRUPTED)
        if result_file is not None:
            write_result(result_file, client.get_result(agent_id))
        if download is not None:
            for note in files.download_artifacts(client, agent_id, download, client.list_artifacts(agent_id)):
                sys.stderr.write(f"agentfactory: {note}\n")
    raise typer.Exit(agent_exit_code(final))


def artifacts(
    ctx: typer.Context,
    agent_id: IdArgument,
    download: Annotated[
        Path | None, typer.Option(help="download them here, each checked against its sha256", metavar="DIR")
    ] = None,
    json_out: JsonOption = False,
    output: DocOutputOption = None,
) -> None:
    """List an agent's artifacts (and the dropped ones); with --download, fetch them into DIR."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        manifest = client.list_artifacts(agent_id)
        if download is not None:
            for note in files.download_artifacts(client, agent_id, download, manifest):
                sys.stderr.write(f"agentfactory: {note}\n")
    if fmt:
        return print_doc(manifest, fmt)
    rows = [[i["path"], str(i["bytes"]), i["sha256"]] for i in manifest["items"]]
    rows += [[d["path"], str(d["bytes"]), "dropped"] for d in manifest["dropped"]]
    print_table(["PATH", "BYTES", "SHA256"], rows)


def write_result(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}", EXIT_IO) from exc


def logs(
    ctx: typer.Context,
    agent_id: IdArgument,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the agent ends")] = False,
    tail: Annotated[int | None, typer.Option(min=0, help="only the last N lines", metavar="N")] = None,
    stream: Annotated[str | None, typer.Option(help="stdout or stderr only", metavar="STREAM")] = None,
    json_out: JsonOption = False,
    output: DocOutputOption = None,
) -> None:
    """Print an agent's captured output (stdout lines to stdout, stderr lines to stderr).

    --tail N (up to 5000) is one request, however long the output; a larger N pages through it all.
    -o json|yaml prints the lines as one document; with -f, --json prints one JSON event per line.
    """
    fmt = output_format(output, json_out, DOC_FORMATS)
    if follow and fmt not in (None, "json"):
        raise typer.BadParameter("with --follow, only --json (one JSON event per line)", param_hint="-o/--output")
    if stream not in (None, "stdout", "stderr"):
        raise typer.BadParameter("must be stdout or stderr", param_hint="--stream")
    streams = (stream,) if stream else ("stdout", "stderr")
    with api_client(ctx) as client:
        if follow:
            client.get_agent(agent_id)  # an unknown id, a bad key or a down server fail now, not in 60 s
            final = follow_agent(client, agent_id, json_lines=fmt == "json", tail=tail, streams=streams)
            raise typer.Exit(EXIT_INTERRUPTED if final is None else 0)
        out = FollowOutput(agent_id, json_lines=False, streams=streams)
        if tail == 0:
            done = client.get_agent(agent_id)["status"] in TERMINAL
            page: dict[str, Any] = {"lines": [], "next_cursor": None, "complete": done}
        elif tail is not None and tail <= MAX_LOG_PAGE:
            page = client.get_logs(agent_id, tail=tail, stream=stream)
        else:
            page = _all_lines(client, agent_id, stream=stream, keep=tail, out=None if fmt or tail else out)
    if fmt:
        return print_doc(page, fmt)
    for line in page["lines"]:
        out.line(line)


def _all_lines(
    client: ApiClient, agent_id: str, *, stream: str | None, keep: int | None, out: FollowOutput | None
) -> dict[str, Any]:
    """Every page of the output: each line printed as it comes (`out`), or the last `keep` kept."""
    kept: deque[dict[str, Any]] = deque(maxlen=keep)
    last_seq, complete = None, False
    for page in client.iter_log_pages(agent_id, stream=stream):
        complete = bool(page.get("complete"))
        for line in page.get("lines") or []:
            last_seq = line["seq"]
            out.line(line) if out is not None else kept.append(line)
    return {"lines": list(kept), "next_cursor": None if last_seq is None else str(last_seq), "complete": complete}


def status(ctx: typer.Context, agent_id: IdArgument, json_out: JsonOption = False, output: OutputOption = None) -> None:
    """Show one agent."""
    fmt = output_format(output, json_out)
    with api_client(ctx) as client:
        agent = client.get_agent(agent_id)
    if fmt:
        print_agents([agent], fmt)
    else:
        print_fields({**agent, "dashboard": dashboard_url(client.base_url, agent)}, AGENT_FIELDS)


def dashboard_url(base_url: str, agent: dict[str, Any]) -> str:
    """The agent's page in the dashboard (SPEC §12), absolute: the server's `links.dashboard`."""
    path = (agent.get("links") or {}).get("dashboard") or f"/ui/agents/{agent['id']}"
    return base_url.rstrip("/") + path


def list_agents(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="only agents in this status", metavar="STATUS")] = None,
    selector: SelectorOption = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="page size", metavar="N")] = 50,
    cursor: Annotated[str | None, typer.Option(help="continue from a previous page", metavar="CURSOR")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="follow every page")] = False,
    json_out: JsonOption = False,
    output: OutputOption = None,
) -> None:
    """List your agents, newest first (-l KEY=VALUE: only those with this metadata)."""
    fmt = output_format(output, json_out)
    metadata = parse_selector(selector)
    items: list[dict[str, Any]] = []
    with api_client(ctx) as client:
        while True:
            page = client.list_agents(status=status, limit=limit, cursor=cursor, metadata=metadata)
            items += page.get("items") or []
            cursor = page.get("next_cursor")
            if not all_pages or not cursor:
                break
    if fmt in ("json", "yaml"):
        return print_doc({"items": items, "next_cursor": cursor}, fmt)
    print_agents(items, fmt)
    if cursor:
        sys.stderr.write(f"more: the same command with --cursor {cursor}, or --all\n")


def print_agents(items: list[dict[str, Any]], fmt: str | None) -> None:
    """Agents as a table (`wide`: more columns), their ids (`name`), or one document each (json, yaml)."""
    if fmt == "name":
        return print_names([a["id"] for a in items])
    if fmt in ("json", "yaml"):
        return print_doc(items[0] if len(items) == 1 else {"items": items}, fmt)
    headers = ["ID", "STATUS", "MODEL", "TOOLS", "AGE", "EXIT", "REASON"]
    rows = [
        [a["id"], str(a.get("status")), str(a.get("model")), cell("tools", a.get("tools")), ago(a.get("created_at")),
         cell("exit_code", a.get("exit_code")), cell("reason", a.get("reason"))]
        for a in items
    ]  # fmt: skip
    if fmt == "wide":
        headers += ["EXPIRES", "LINES", "METADATA"]
        for row, a in zip(rows, items, strict=True):
            expires = ago(a.get("expires_at")) if a.get("status") not in TERMINAL else "-"
            row += [expires, cell("log_lines", a.get("log_lines")), cell("metadata", a.get("metadata"))]
    print_table(headers, rows)


def wait(
    ctx: typer.Context,
    agent_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="agent ids")],
    timeout: Annotated[
        int | None,
        typer.Option("--timeout", parser=parse_duration, metavar="DURATION", help="give up after this (exit 75)"),
    ] = None,
    json_out: JsonOption = False,
    output: OutputOption = None,
) -> None:
    """Wait until the agents end; exit with the verdict (of the first one that did not succeed)."""
    fmt = output_format(output, json_out)
    finals: list[dict[str, Any]] = []
    with api_client(ctx) as client:
        for agent_id in agent_ids:
            try:
                finals.append(client.wait_agent(agent_id, timeout=timeout))
            except WaitTimeout as exc:
                raise CliError(str(exc), EXIT_TEMPFAIL) from exc
    if fmt:
        print_agents(finals, fmt)
    else:
        for agent in finals:
            sys.stdout.write(f"{agent['id']}\t{agent.get('status')}\n")
    codes = [agent_exit_code(agent) for agent in finals]
    raise typer.Exit(next((code for code in codes if code != 0), 0))


def rm(
    ctx: typer.Context,
    agent_ids: Annotated[list[str], typer.Argument(metavar="ID...")],
    json_out: JsonOption = False,
    output: OutputOption = None,
) -> None:
    """Stop agents now (status cancelled); a finished agent is left as it is. Prints `ID<tab>status`
    for each, or with -o the agents as `status` does (json/yaml: `{"items": [...]}` for several IDs)."""
    fmt = output_format(output, json_out)
    failures: list[int] = []
    stopped: list[dict[str, Any]] = []
    with api_client(ctx) as client:
        for agent_id in agent_ids:
            try:
                agent = client.delete_agent(agent_id)
            except ApiError as exc:
                failures.append(exit_code_for(exc))
                sys.stderr.write(f"error: {agent_id}: {api_message(exc)}\n")
                continue
            stopped.append(agent)
            if fmt is None:
                sys.stdout.write(f"{agent_id}\t{agent.get('status')}\n")
    if fmt in ("json", "yaml") and len(agent_ids) > 1:
        print_doc({"items": stopped}, fmt)
    elif fmt and stopped:
        print_agents(stopped, fmt)
    if failures:
        raise typer.Exit(failures[0])


def ttl(
    ctx: typer.Context,
    agent_id: IdArgument,
    duration: Annotated[int, typer.Argument(parser=parse_duration, metavar="DURATION", help="from now")],
    json_out: JsonOption = False,
    output: OutputOption = None,
) -> None:
    """Set a running agent's time to live: it expires DURATION from now."""
    fmt = output_format(output, json_out)
    with api_client(ctx) as client:
        agent = client.set_ttl(agent_id, duration)
    if fmt:
        return print_agents([agent], fmt)
    sys.stdout.write(f"{agent_id}\texpires_at {cell('expires_at', agent.get('expires_at'))}\n")


def result(ctx: typer.Context, agent_id: IdArgument, json_out: JsonOption = False, output: OutputOption = None) -> None:
    """The result document of an agent: verdict, timings, usage and log seal."""
    fmt = output_format(output, json_out, ("json", "yaml", "name"))
    with api_client(ctx) as client:
        doc = client.get_result(agent_id)
    if fmt in ("json", "yaml"):
        return print_doc(doc, fmt)
    if fmt == "name":
        return print_names([doc["id"]])
    print_fields(doc, ("id", "status", "reason", "exit_code", "error"))
