"""`events` and `webhooks create|list|rm|deliveries|retry` (SPEC §11), through `agentfactory.client`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from agentfactory.cli.options import (
    DOC_FORMATS,
    DocOutputOption,
    JsonOption,
    api_client,
    output_format,
    parse_pairs,
    split_list,
)
from agentfactory.cli.render import ago, cell, print_doc, print_table, to_yaml
from agentfactory.vocabulary import DeliveryStatus, EventType

TypesOption = Annotated[
    list[str] | None,
    typer.Option("--type", "-t", help=f"only these types (repeat or comma-separate): {', '.join(EventType)}",
                 metavar="TYPE"),
]  # fmt: skip
WebhookId = Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="webhook id (wh_...)")]


def _event_line(ev: dict[str, Any]) -> str:
    agent = ev.get("agent") or {}
    verdict = [str(agent.get("status", "?"))]
    if agent.get("reason"):
        verdict.append(f"reason={agent['reason']}")
    if agent.get("exit_code") is not None:
        verdict.append(f"exit={agent['exit_code']}")
    return f"{ev.get('id')}\t{ev.get('created_at')}\t{ev.get('type')}\t{agent.get('id')}\t{' '.join(verdict)}\n"


def events(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")] = False,
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent's events", metavar="ID")] = None,
    type_: TypesOption = None,
    after: Annotated[int | None, typer.Option(min=0, help="start after this event id", metavar="ID")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON event per line (= -o json)")] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="json (one event per line) or yaml (one document each)",
            metavar="FORMAT",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Lifecycle events of your agents (admin: all): the retained history, or with -f new ones as they happen."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        for ev in client.iter_events(follow=follow, after=after, agent_id=agent, types=split_list(type_)):
            if fmt == "json":
                sys.stdout.write(json.dumps(ev, ensure_ascii=False) + "\n")
            elif fmt == "yaml":  # a YAML stream: each event its own document
                sys.stdout.write("---\n" + to_yaml(ev))
            else:
                sys.stdout.write(_event_line(ev))
            sys.stdout.flush()


def webhooks_create(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(metavar="URL", help="http(s) URL the events are POSTed to")],
    event: Annotated[
        list[str] | None, typer.Option("--event", "-e", help="event type to send (repeat; default all)", metavar="TYPE")
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="only agents with this metadata (repeat)", metavar="KEY=VALUE")
    ] = None,
    json_out: JsonOption = False,
    output: DocOutputOption = None,
) -> None:
    """Create a webhook; its signing secret is printed once."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    body: dict[str, Any] = {"url": url, "metadata": parse_pairs(meta, "--meta")}
    if types := split_list(event):
        body["events"] = types
    with api_client(ctx) as client:
        hook = client.create_webhook(body)
    if fmt:
        return print_doc(hook, fmt)
    sys.stdout.write(f"{hook.get('secret')}\n")
    sys.stderr.write(f"created {hook.get('id')} -> {url}; the signing secret above is shown only this once\n")


def webhooks_list(ctx: typer.Context, json_out: JsonOption = False, output: DocOutputOption = None) -> None:
    """Your webhooks (admin: all), with their circuit state."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        doc = client.list_webhooks()
    if fmt:
        return print_doc(doc, fmt)
    rows = [
        [h["id"], str(h.get("url")), cell("events", h.get("events")), cell("metadata", h.get("metadata")),
         str(h.get("circuit")), str(h.get("consecutive_failures")), ago(h.get("created_at"))]
        for h in doc.get("items", [])
    ]  # fmt: skip
    print_table(["ID", "URL", "EVENTS", "METADATA", "CIRCUIT", "FAILURES", "AGE"], rows)


def webhooks_rm(ctx: typer.Context, webhook_id: WebhookId) -> None:
    """Delete a webhook and its pending deliveries."""
    with api_client(ctx) as client:
        client.delete_webhook(webhook_id)
    sys.stdout.write(f"{webhook_id}\tdeleted\n")


def _last_attempt(d: dict[str, Any]) -> str:
    attempts = d.get("attempts") or []
    if not attempts:
        return "-"
    last = attempts[-1]
    return str(last.get("status_code") or last.get("error") or "-")[:60]


def webhooks_deliveries(
    ctx: typer.Context,
    webhook_id: WebhookId,
    status: Annotated[DeliveryStatus | None, typer.Option(help="only deliveries in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="newest N")] = 50,
    json_out: JsonOption = False,
    output: DocOutputOption = None,
) -> None:
    """A webhook's deliveries, newest first, with their attempts (dead letters: --status dead)."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        doc = client.list_deliveries(webhook_id, status=status.value if status else None, limit=limit)
    if fmt:
        return print_doc(doc, fmt)
    rows = [
        [str(d["id"]), str(d.get("event_id")), str(d.get("event_type")), str(d.get("agent_id")), str(d.get("status")),
         str(d.get("attempt_count")), _last_attempt(d), cell("next_attempt_at", d.get("next_attempt_at"))]
        for d in doc.get("items", [])
    ]  # fmt: skip
    print_table(["ID", "EVENT", "TYPE", "AGENT", "STATUS", "ATTEMPTS", "LAST", "NEXT"], rows)


def webhooks_retry(
    ctx: typer.Context,
    webhook_id: WebhookId,
    delivery_id: Annotated[int, typer.Argument(metavar="DELIVERY_ID", min=0)],
    json_out: JsonOption = False,
    output: DocOutputOption = None,
) -> None:
    """Send a dead delivery again now (one attempt)."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        d = client.retry_delivery(webhook_id, delivery_id)
    if fmt:
        return print_doc(d, fmt)
    sys.stdout.write(f"{d.get('id')}\t{d.get('status')}\n")
