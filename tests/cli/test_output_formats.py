"""`--json` and `-o FORMAT` on every client command that prints a result (SPEC §7, §15): the same
document either way, and a format a command cannot print refused as a usage error (exit 64)."""

from __future__ import annotations

import json

import typer
import yaml

from agentfactory.cli import app
from agentfactory.client import ApiClient
from tests.cli.conftest import run_cli
from tests.cli.standin import API_KEY, Plan, StandIn


def _agents(standin: StandIn, *plans: Plan) -> None:
    with ApiClient(standin.url, API_KEY) as client:
        for i, plan in enumerate(plans):
            standin.plans[f"p{i}"] = plan
            client.create_agent({"model": "echo", "prompt": f"p{i}"})


def test_every_command_that_prints_a_result_takes_json_and_output() -> None:
    root = typer.main.get_command(app)
    printing = ["run", "logs", "status", "ls", "wait", "rm", "ttl", "result", "artifacts", "catalog", "events",
                "keys create", "keys list", "keys revoke", "webhooks create", "webhooks list",
                "webhooks deliveries", "webhooks retry"]  # fmt: skip
    for name in printing:
        command = root
        for word in name.split():
            command = command.commands[word]  # type: ignore[attr-defined]
        options = {opt for param in command.params for opt in param.opts}
        assert {"--json", "--output", "-o"} <= options, name


def test_rm_prints_the_cancelled_agent_as_status_does(standin: StandIn) -> None:
    _agents(standin, Plan(final_status="running"), Plan(final_status="running"), Plan())
    one = run_cli(standin, "rm", "--json", "ag_0001")
    assert one.returncode == 0, one.stderr
    doc = json.loads(one.stdout)
    assert (doc["id"], doc["status"], doc["reason"]) == ("ag_0001", "cancelled", "cancelled")
    names = run_cli(standin, "rm", "-o", "name", "ag_0002", "ag_0003")
    assert (names.returncode, names.stdout) == (0, "ag_0002\nag_0003\n")
    several = run_cli(standin, "rm", "-o", "yaml", "ag_0002", "ag_9999")
    assert several.returncode == 66 and "ag_9999" in several.stderr  # the missing one still fails the command
    assert [a["id"] for a in yaml.safe_load(several.stdout)["items"]] == ["ag_0002"]
    wide = run_cli(standin, "rm", "-o", "wide", "ag_0003")
    assert wide.stdout.split()[:3] == ["ID", "STATUS", "MODEL"] and "METADATA" in wide.stdout


def test_logs_and_catalog_print_json_and_yaml(standin: StandIn) -> None:
    _agents(standin, Plan(lines=[("stdout", "one"), ("stderr", "two")]))
    as_json = run_cli(standin, "logs", "-o", "json", "ag_0001")
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout == run_cli(standin, "logs", "--json", "ag_0001").stdout
    page = json.loads(as_json.stdout)
    assert [(ln["stream"], ln["text"]) for ln in page["lines"]] == [("stdout", "one"), ("stderr", "two")]
    assert yaml.safe_load(run_cli(standin, "logs", "-o", "yaml", "ag_0001").stdout) == page
    catalog = run_cli(standin, "catalog", "-o", "yaml")
    assert catalog.returncode == 0, catalog.stderr
    assert yaml.safe_load(catalog.stdout) == json.loads(run_cli(standin, "catalog", "--json").stdout)
    assert [m["id"] for m in yaml.safe_load(catalog.stdout)["models"]] == ["echo"]


def test_events_and_artifacts_print_json_and_yaml(standin: StandIn) -> None:
    _agents(standin, Plan(), Plan())
    lines = run_cli(standin, "events", "-o", "json")
    assert lines.returncode == 0, lines.stderr
    events = [json.loads(line) for line in lines.stdout.splitlines()]  # one JSON event per line, as --json
    assert [(e["id"], e["agent"]["id"]) for e in events] == [(1, "ag_0001"), (2, "ag_0002")]
    assert lines.stdout == run_cli(standin, "events", "--json").stdout
    assert list(yaml.safe_load_all(run_cli(standin, "events", "-o", "yaml").stdout)) == events  # a YAML stream
    manifest = json.loads(run_cli(standin, "artifacts", "-o", "json", "ag_0001").stdout)
    assert manifest["items"][0]["path"] == "out/report.md"
    assert yaml.safe_load(run_cli(standin, "artifacts", "-o", "yaml", "ag_0001").stdout) == manifest


def test_a_format_the_command_cannot_print_is_a_usage_error(standin: StandIn) -> None:
    for args, allowed in (
        (["logs", "-o", "wide", "ag_0001"], "one of json, yaml"),
        (["catalog", "-o", "name"], "one of json, yaml"),
        (["artifacts", "-o", "wide", "ag_0001"], "one of json, yaml"),
        (["events", "-o", "name"], "one of json, yaml"),
        (["rm", "-o", "table", "ag_0001"], "one of json, yaml, wide, name"),
        (["result", "-o", "wide", "ag_0001"], "one of json, yaml, name"),
        (["logs", "-f", "-o", "yaml", "ag_0001"], "only --json"),
        (["catalog", "--json", "-o", "yaml"], "--json and -o differ"),
    ):
        proc = run_cli(standin, *args)
        assert proc.returncode == 64, (args, proc.stderr)
        assert allowed in proc.stderr and proc.stdout == "", (args, proc.stderr)
    assert standin.requests == []  # refused before anything was sent
