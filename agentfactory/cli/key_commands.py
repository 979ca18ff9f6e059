"""The catalog and API-key commands (`catalog`, `keys create|list|revoke`), SPEC §7."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from agentfactory.cli.options import (
    DOC_FORMATS,
    DocOutputOption,
    JsonOption,
    api_client,
    output_format,
    parse_duration,
    split_list,
)
from agentfactory.cli.render import (
    ago,
    cell,
    print_doc,
    print_table,
)

# --- catalog and keys ------------------------------------------------------------------------------


def catalog(ctx: typer.Context, json_out: JsonOption = False, output: DocOutputOption = None) -> None:
    """The models and tools this server offers, and its limits."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        doc = client.get_catalog()
    if fmt:
        return print_doc(doc, fmt)
    models = [[m.get("id", "?"), m.get("provider", "-"), m.get("description", "")] for m in doc.get("models", [])]
    print_table(["MODEL", "PROVIDER", "DESCRIPTION"], models)
    sys.stdout.write("\n")
    tools = [[t.get("id", "?"), "yes" if t.get("network") else "no", t.get("description", "")]
             for t in doc.get("tools", [])]  # fmt: skip
    print_table(["TOOL", "NETWORK", "DESCRIPTION"], tools)
    if limits := doc.get("limits"):
        sys.stdout.write("\nlimits: " + ", ".join(f"{k}={v}" for k, v in limits.items()) + "\n")


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
    output: DocOutputOption = None,
) -> None:
    """Create an API key; its secret is printed once."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    body: dict[str, Any] = {
        "name": name,
        "admin": admin,
        "models": split_list(model),
        "tools": split_list(tool),
    }
    limits = {
        "max_concurrent_agents": max_concurrent,
        "max_requests_per_minute": rpm,
        "max_ttl_seconds": max_ttl,
        "max_streams": max_streams,
    }
    body |= {k: v for k, v in limits.items() if v is not None}
    with api_client(ctx) as client:
        key = client.create_key(body)
    if fmt:
        return print_doc(key, fmt)
    sys.stdout.write(f"{key.get('key')}\n")
    sys.stderr.write(f"created {key.get('id')} ({name}); the key above is shown only this once\n")


def keys_list(ctx: typer.Context, json_out: JsonOption = False, output: DocOutputOption = None) -> None:
    """List API keys and their quotas."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        doc = client.list_keys()
    if fmt:
        return print_doc(doc, fmt)
    items = doc.get("items", []) if isinstance(doc, dict) else doc
    headers = ["ID", "NAME", "PREFIX", "ADMIN", "MODELS", "TOOLS", "MAX AGENTS", "RPM", "MAX TTL", "AGE", "REVOKED"]
    rows = [
        [k["id"], str(k.get("name")), str(k.get("prefix") or "-"), "yes" if k.get("admin") else "no",
         cell("models", k.get("models") or ["*"]), cell("tools", k.get("tools") or ["*"]),
         *(cell(c, k.get(c)) for c in ("max_concurrent_agents", "max_requests_per_minute", "max_ttl_seconds")),
         ago(k.get("created_at")), ago(k.get("revoked_at")) if k.get("revoked_at") else "-"]
        for k in items
    ]  # fmt: skip
    print_table(headers, rows)


def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOption = False,
    output: DocOutputOption = None,
) -> None:
    """Revoke an API key: it is refused from now on."""
    fmt = output_format(output, json_out, DOC_FORMATS)
    with api_client(ctx) as client:
        key = client.revoke_key(key_id)
    if fmt:
        return print_doc(key, fmt)
    sys.stdout.write(f"{key_id}\trevoked\n")
