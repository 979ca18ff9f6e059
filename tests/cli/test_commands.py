"""The client commands against a real stand-in server: --json output, tables, logs, and error lines."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse, Response

from agentfactory.client import ApiClient
from tests.cli.conftest import run_cli
from tests.cli.standin import API_KEY, Plan, StandIn


def _make_agents(standin: StandIn, n: int = 3, first: Plan | None = None) -> None:
    """Setup through the client library (fast); the commands under test run as subprocesses."""
    standin.plans["first"] = first or Plan(final_status="running")
    with ApiClient(standin.url, API_KEY) as client:
        for i in range(n):
            client.create_agent({"model": "echo", "prompt": "first" if i == 0 else f"p{i}"})


def test_json_outputs_parse(standin: StandIn) -> None:
    _make_agents(standin)
    outputs = {}
    for args in (["status", "ag_0002"], ["ls"], ["result", "ag_0002"], ["catalog"], ["keys", "list"],
                 ["ttl", "ag_0001", "20m"], ["keys", "create", "ci", "--tool", "python"]):  # fmt: skip
        proc = run_cli(standin, *args, "--json")
        assert proc.returncode == 0, (args, proc.stderr)
        outputs[args[0]] = json.loads(proc.stdout)
    assert outputs["status"]["status"] == "succeeded"
    assert [a["id"] for a in outputs["ls"]["items"]] == ["ag_0003", "ag_0002", "ag_0001"]


def test_human_tables_show_ids_untruncated(standin: StandIn) -> None:
    _make_agents(standin)
    proc = run_cli(standin, "ls", "--status", "running")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "MODEL"]
    assert [row.split()[:2] for row in rows] == [["ag_0001", "running"]]
    status = run_cli(standin, "status", "ag_0002").stdout
    assert "ag_0002" in status and "succeeded" in status and "log_sha256" in status
    catalog = run_cli(standin, "catalog").stdout
    assert "browser_server" in catalog and "max_ttl_seconds=3600" in catalog


def test_ls_pages(standin: StandIn) -> None:
    _make_agents(standin, 5)
    proc = run_cli(standin, "ls", "--limit", "2")
    assert len(proc.stdout.splitlines()) == 3 and "--cursor 2" in proc.stderr
    everything = json.loads(run_cli(standin, "ls", "--limit", "2", "--all", "--json").stdout)
    assert len(everything["items"]) == 5 and everything["next_cursor"] is None


def test_logs_pages_through_everything_and_splits_streams(standin: StandIn) -> None:
    lines = [("stderr" if i % 100 == 0 else "stdout", f"line {i}") for i in range(1, 451)]
    _make_agents(standin, 1, Plan(lines=lines))
    proc = run_cli(standin, "logs", "ag_0001")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [t for s, t in lines if s == "stdout"]
    assert proc.stderr.splitlines() == ["line 100", "line 200", "line 300", "line 400"]
    assert len([r for r in standin.requests if r["path"].endswith("/logs")]) == 5  # pages of 100

    tail = run_cli(standin, "logs", "ag_0001", "--tail", "3")
    assert tail.stdout.splitlines() == ["line 448", "line 449", "line 450"]
    doc = json.loads(run_cli(standin, "logs", "ag_0001", "--json", "--tail", "2").stdout)
    assert [ln["seq"] for ln in doc["lines"]] == [449, 450] and doc["complete"] is True
    only_err = run_cli(standin, "logs", "ag_0001", "--stream", "stderr")
    assert only_err.stdout == "" and len(only_err.stderr.splitlines()) == 4


def test_logs_follow_with_tail(standin: StandIn) -> None:
    _make_agents(standin, 1, Plan(lines=[("stdout", f"n{i}") for i in range(1, 11)], line_interval=0.01))
    proc = run_cli(standin, "logs", "-f", "--tail", "4", "ag_0001")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == ["n7", "n8", "n9", "n10"]


def test_rm_cancels_and_reports_unknown_ids(standin: StandIn) -> None:
    _make_agents(standin, 2)
    proc = run_cli(standin, "rm", "ag_0001", "ag_0002", "ag_9999")
    assert proc.returncode == 66  # EX_NOINPUT: not found
    assert proc.stdout.splitlines() == ["ag_0001\tcancelled", "ag_0002\tsucceeded"]
    assert proc.stderr == "error: ag_9999: E_NOT_FOUND: no such agent (404)\n"


def test_keys_create_prints_the_secret_once_and_sends_quotas(standin: StandIn) -> None:
    proc = run_cli(standin, "keys", "create", "ci-main", "--model", "echo", "--tool", "python",
                   "--max-concurrent", "4", "--rpm", "60", "--max-ttl", "1h", "--max-streams", "3")  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout == "af_secret\n" and "shown only this once" in proc.stderr
    assert standin.requests[-1]["json"] == {
        "name": "ci-main", "admin": False, "models": ["echo"], "tools": ["python"],
        "max_concurrent_agents": 4, "max_requests_per_minute": 60, "max_ttl_seconds": 3600, "max_streams": 3,
    }  # fmt: skip
    assert run_cli(standin, "keys", "revoke", "key_0001").stdout == "key_0001\trevoked\n"


def test_wrong_key_is_one_line_and_exit_77(standin: StandIn) -> None:
    proc = run_cli(standin, "status", "ag_0001", AGENTFACTORY_API_KEY="nope")
    assert proc.returncode == 77
    assert proc.stderr == "error: E_AUTH: unknown API key (401)\n"
    assert proc.stdout == ""


def test_missing_key_hints_at_the_variable(standin: StandIn) -> None:
    proc = run_cli(standin, "ls", AGENTFACTORY_API_KEY="", AGENTFACTORY_CONFIG="/nonexistent/config.toml")
    assert proc.returncode == 77
    assert proc.stderr == (
        "error: E_AUTH: unknown API key (401); no API key was given: set AGENTFACTORY_API_KEY, pass --api-key, "
        "or `agentfactory login`\n"
    )


def test_validation_error_exit_65_with_details(standin: StandIn) -> None:
    proc = run_cli(standin, "run", "-m", "echo", "--ttl", "2h", "hi")
    assert proc.returncode == 65
    assert proc.stderr == "error: E_SCHEMA: body does not validate (422) — ttl_seconds: must be <= 3600\n"
    proc = run_cli(standin, "run", "-m", "nope", "--follow", "hi")
    assert (proc.returncode, proc.stderr) == (65, "error: E_CATALOG: unknown model 'nope' (422)\n")


def test_rate_limit_prints_retry_after(standin: StandIn) -> None:
    body = {"error": {"code": "E_QUOTA", "message": "10 agents running", "details": []}, "request_id": "r"}
    standin.fail_next.append(JSONResponse(body, status_code=429, headers={"Retry-After": "17"}))
    proc = run_cli(standin, "run", "-m", "echo", "hi")
    assert proc.returncode == 75  # EX_TEMPFAIL: try again later
    assert proc.stderr == "error: E_QUOTA: 10 agents running (429); retry after 17s\n"


def test_non_json_error_and_not_found(standin: StandIn) -> None:
    standin.fail_next.append(Response("<html>bad gateway</html>", status_code=502, media_type="text/html"))
    proc = run_cli(standin, "catalog")
    assert (proc.returncode, proc.stderr) == (69, "error: HTTP 502: Bad Gateway (502)\n")
    proc = run_cli(standin, "status", "ag_404")
    assert (proc.returncode, proc.stderr) == (66, "error: E_NOT_FOUND: no such agent (404)\n")


def test_unreachable_server_exit_69(standin: StandIn) -> None:
    proc = run_cli(standin, "run", "-m", "echo", "--follow", "hi", AGENTFACTORY_URL="http://127.0.0.1:9")
    assert proc.returncode == 69
    assert proc.stderr.startswith("error: cannot reach http://127.0.0.1:9 (") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
