"""The CLI of SPEC §15 against the stand-in: the exit-code table, `wait`, `-o`, `-l`, `logs --tail`
in one request, completion, and config contexts (`login`, `context`)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from agentfactory.cli import options
from agentfactory.client import agent_exit_code
from tests.cli.conftest import AGENTFACTORY, cli_env, run_cli
from tests.cli.standin import API_KEY, Plan, StandIn

ROOT = Path(__file__).resolve().parents[2]


def _create(standin: StandIn, prompt: str, *meta: str) -> str:
    args = [a for m in meta for a in ("--meta", m)]
    proc = run_cli(standin, "run", "-m", "echo", *args, prompt)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# --- the exit-code table -----------------------------------------------------------------------------


def test_an_agent_exiting_2_and_an_unreachable_server_give_different_codes(standin: StandIn) -> None:
    standin.plans["two"] = Plan(lines=[("stderr", "bad spec")], final_status="failed", exit_code=2)
    agent = run_cli(standin, "run", "-m", "echo", "--follow", "two")
    unreachable = run_cli(standin, "run", "-m", "echo", "--follow", "two", AGENTFACTORY_URL="http://127.0.0.1:9")
    assert agent.returncode == 2, agent.stderr
    assert unreachable.returncode == options.EXIT_UNREACHABLE == 69
    # and `wait` gives the same verdict as `run --follow`
    agent_id = _create(standin, "two")
    assert run_cli(standin, "wait", agent_id).returncode == 2


def test_no_verdict_uses_a_code_of_the_clis_own() -> None:
    own = {v for k, v in vars(options).items() if k.startswith("EXIT_") and k != "EXIT_INTERRUPTED"}
    assert own <= set(range(64, 79)), own
    verdicts = {agent_exit_code({"status": s, "exit_code": c}) for s in ("succeeded", "failed", "cancelled", "expired")
                for c in [None, *range(-1, 300)]}  # fmt: skip
    assert not verdicts & own


def test_the_documented_table_is_the_codes_the_cli_uses() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("## Exit codes") :]
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` \|", table, flags=re.M)}
    own = {v for k, v in vars(options).items() if k.startswith("EXIT_")}
    assert own <= documented, own - documented
    assert {0, 124}.issubset(documented)


def test_auth_not_found_refused_and_unreachable_each_have_their_code(standin: StandIn) -> None:
    assert run_cli(standin, "status", "ag_x", AGENTFACTORY_API_KEY="wrong").returncode == 77
    assert run_cli(standin, "status", "ag_nope").returncode == 66
    assert run_cli(standin, "status", "ag_x", AGENTFACTORY_URL="http://127.0.0.1:9").returncode == 69
    assert run_cli(standin, "run", "-m", "echo", "--ttl", "2h", "x").returncode == 65
    assert run_cli(standin, "ls", "--bogus").returncode == 64


# --- wait ----------------------------------------------------------------------------------------------


def test_wait_returns_when_the_agent_ends_and_times_out_with_75(standin: StandIn) -> None:
    standin.plans["slow"] = Plan(lines=[("stdout", "a"), ("stdout", "b")], line_interval=0.5)
    standin.plans["forever"] = Plan(final_status="running")
    slow = _create(standin, "slow")
    proc = run_cli(standin, "wait", slow)
    assert (proc.returncode, proc.stdout) == (0, f"{slow}\tsucceeded\n")
    forever = _create(standin, "forever")
    proc = run_cli(standin, "wait", "--timeout", "1", forever)
    assert proc.returncode == options.EXIT_TEMPFAIL == 75
    assert proc.stderr == f"error: agent {forever} is still running after 1s\n"
    proc = run_cli(standin, "wait", slow, "-o", "json")
    assert json.loads(proc.stdout)["status"] == "succeeded"


# --- -o and -l -----------------------------------------------------------------------------------------


def test_selector_and_output_formats(standin: StandIn) -> None:
    a = _create(standin, "a", "ci_run=42", "job=lint")
    b = _create(standin, "b", "ci_run=42", "job=test")
    _create(standin, "c", "ci_run=43")
    proc = run_cli(standin, "ls", "-l", "ci_run=42", "-o", "name")
    assert (proc.returncode, proc.stdout) == (0, f"{b}\n{a}\n")
    assert standin.requests[-1]["query"]["metadata.ci_run"] == "42"
    assert run_cli(standin, "ls", "-l", "ci_run=42,job=lint", "-o", "name").stdout == f"{a}\n"
    assert run_cli(standin, "ls", "-l", "ci_run=42", "-l", "job=test", "-o", "name").stdout == f"{b}\n"
    doc = yaml.safe_load(run_cli(standin, "ls", "-l", "ci_run=42", "-o", "yaml").stdout)
    assert [item["id"] for item in doc["items"]] == [b, a]
    assert doc == json.loads(run_cli(standin, "ls", "-l", "ci_run=42", "-o", "json").stdout)
    wide = run_cli(standin, "ls", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["EXPIRES", "LINES", "METADATA"] and "ci_run=42, job=lint" in wide[-1]
    assert run_cli(standin, "status", a, "-o", "name").stdout == f"{a}\n"
    assert yaml.safe_load(run_cli(standin, "status", a, "-o", "yaml").stdout)["metadata"] == {
        "ci_run": "42", "job": "lint"
    }  # fmt: skip
    assert run_cli(standin, "ls", "--json", "-o", "yaml").returncode == 64


# --- logs --tail ---------------------------------------------------------------------------------------


def test_logs_tail_is_one_request(standin: StandIn) -> None:
    standin.plans["many"] = Plan(lines=[("stdout", f"l{i}") for i in range(1, 12001)])
    agent_id = _create(standin, "many")
    before = len(standin.requests)
    proc = run_cli(standin, "logs", "--tail", "5", agent_id)
    assert proc.stdout.splitlines() == [f"l{i}" for i in range(11996, 12001)]
    calls = standin.requests[before:]
    assert [(c["path"], c["query"]) for c in calls] == [(f"/agents/{agent_id}/logs", {"tail": "5"})]
    doc = json.loads(run_cli(standin, "logs", "--tail", "2", "--json", agent_id).stdout)
    assert [line["text"] for line in doc["lines"]] == ["l11999", "l12000"] and doc["complete"] is True
    # past one page's worth, it pages through and keeps the end
    proc = run_cli(standin, "logs", "--tail", "6000", agent_id)
    assert proc.stdout.splitlines() == [f"l{i}" for i in range(6001, 12001)]


# --- completion ----------------------------------------------------------------------------------------


def test_shell_completion_is_offered(standin: StandIn) -> None:
    # With detection off (no parent shell to detect under pytest), Typer's flags take the shell's name.
    proc = run_cli(standin, "--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert proc.returncode == 0 and "_agentfactory_completion" in proc.stdout
    completion = subprocess.run(
        [AGENTFACTORY], capture_output=True, text=True, timeout=30, check=False,
        env=cli_env(standin, _AGENTFACTORY_COMPLETE="complete_bash", COMP_WORDS="agentfactory lo", COMP_CWORD="1"),
    )  # fmt: skip
    assert {"login", "logs"} <= set(completion.stdout.split()), completion


# --- contexts ------------------------------------------------------------------------------------------


def _bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFACTORY_")}
    return env | {"AGENTFACTORY_CONFIG": str(tmp_path / "config.toml"), "COLUMNS": "200"} | extra


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENTFACTORY, *args], input=stdin, capture_output=True, text=True, env=env, timeout=30,
                          check=False)  # fmt: skip


def test_login_saves_a_context_that_later_commands_use(standin: StandIn, tmp_path: Path) -> None:
    env = _bare_env(tmp_path)
    proc = _cli(env, "--url", standin.url, "login", "--name", "ci", "--api-key-stdin", stdin=API_KEY + "\n")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text()) == {
        "current-context": "ci", "contexts": {"ci": {"url": standin.url, "api_key": API_KEY}}
    }  # fmt: skip
    agent_id = _cli(env, "run", "-m", "echo", "hi").stdout.strip()  # no URL, no key: the context's
    assert agent_id and _cli(env, "status", agent_id, "-o", "name").stdout == f"{agent_id}\n"

    # a wrong key is refused before anything is saved
    proc = _cli(env, "--url", standin.url, "--api-key", "wrong", "login", "--name", "bad")
    assert proc.returncode == 77 and "bad" not in path.read_text()
    # a second context, then switch between them
    assert _cli(env, "--url", "http://127.0.0.1:9", "--api-key", "k", "login", "-n", "down").returncode == 69
    config = path.read_text()
    path.write_text(config + '\n[contexts.down]\nurl = "http://127.0.0.1:9"\napi_key = "k"\n')
    assert _cli(env, "context", "use", "down").returncode == 0
    assert _cli(env, "ls").returncode == 69
    assert _cli(env, "--context", "ci", "ls", "-o", "name").stdout == f"{agent_id}\n"
    assert _cli(env | {"AGENTFACTORY_CONTEXT": "ci"}, "ls", "-o", "name").stdout == f"{agent_id}\n"
    listing = _cli(env, "context", "ls").stdout
    assert re.search(r"^\*\s+down\s", listing, flags=re.M) and re.search(r"^\s+ci\s", listing, flags=re.M)
    assert _cli(env, "--context", "nope", "ls").returncode == 78
    assert _cli(env, "context", "rm", "down").returncode == 0
    assert "down" not in path.read_text()


def test_a_context_key_is_not_sent_to_another_server(standin: StandIn, tmp_path: Path) -> None:
    env = _bare_env(tmp_path)
    assert _cli(env, "--url", standin.url, "login", "--api-key-stdin", stdin=API_KEY).returncode == 0
    other = standin.url.replace("127.0.0.1", "localhost")
    proc = _cli(env, "--url", other, "ls")
    assert proc.returncode == 77  # the stand-in saw no key
    assert standin.requests[-1]["headers"].get("authorization") is None


def test_an_unreadable_config_is_exit_78(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("this is = = not toml")
    proc = _cli(_bare_env(tmp_path), "ls")
    assert proc.returncode == 78 and proc.stderr.startswith("error: cannot read ")


@pytest.mark.parametrize("argv", [["serve"], ["db", "upgrade"], ["reap", "--once"]])
def test_server_commands_name_the_extra_when_it_is_missing(tmp_path: Path, argv: list[str]) -> None:
    """A stand-in for an install without the server extra: `fastapi` and `sqlalchemy` cannot be imported."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    for name in ("fastapi", "sqlalchemy", "pydantic_settings", "uvicorn"):
        (blocker / name).mkdir()
        (blocker / name / "__init__.py").write_text(f"raise ModuleNotFoundError('no {name}', name={name!r})\n")
    env = _bare_env(tmp_path, PYTHONPATH=str(blocker))
    proc = _cli(env, *argv)
    assert proc.returncode == 78, proc.stderr
    assert "pip install 'agentfactory[server]'" in proc.stderr and "Traceback" not in proc.stderr


def test_db_upgrade_migrates_once_then_says_so(tmp_path: Path) -> None:
    db = tmp_path / "af.db"
    env = _bare_env(tmp_path, AGENTFACTORY_DATABASE_URL=f"sqlite:///{db}")
    first = _cli(env, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(
        rf"sqlite:///{re.escape(str(db))}: upgraded from an empty database to revision \w+\n", first.stdout
    )
    revision = first.stdout.split()[-1]
    again = _cli(env, "db", "upgrade")
    assert (again.returncode, again.stdout) == (0, f"sqlite:///{db}: already at revision {revision}\n")
    bad = _cli(
        _bare_env(tmp_path, AGENTFACTORY_DATABASE_URL=f"sqlite:///{tmp_path}/no/such/dir/af.db"), "db", "upgrade"
    )
    assert bad.returncode == 69 and bad.stderr.startswith("error: cannot migrate ")
