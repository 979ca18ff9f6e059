"""`agentfactory run --follow` against a real stand-in server: output, exit codes, reconnects, Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from agentfactory.client import AgentFollower, ApiClient, ServerUnreachable
from tests.cli.conftest import AGENTFACTORY, cli_env, run_cli
from tests.cli.standin import API_KEY, Plan, StandIn


def numbered(n: int, stream: str = "stdout") -> list[tuple[str, str]]:
    return [(stream, f"line {i}") for i in range(1, n + 1)]


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def test_follow_prints_every_line_in_order_and_splits_streams(standin: StandIn) -> None:
    lines = numbered(1000)
    lines[10] = ("stderr", "warning: on stderr")
    standin.plans["count"] = Plan(lines=lines, line_interval=0.001)
    proc = run_cli(standin, "run", "--model", "echo", "--tool", "python", "--ttl", "10m", "--follow", "count")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [text for stream, text in lines if stream == "stdout"]
    assert proc.stderr.splitlines() == ["warning: on stderr"]


def test_run_sends_the_whole_body_and_an_idempotency_key(standin: StandIn) -> None:
    proc = run_cli(
        standin, "run", "-m", "echo", "-t", "python,shell", "--tool", "browser_server", "--ttl", "45m",
        "--env", "FOO=bar=baz", "--secret", "TOKEN=s3cret", "--secret-env", "FROM_SHELL", "--meta", "ci_run=42",
        "--token-budget", "2000", "--idempotency-key", "build-42", "-",
        stdin="prompt from\nstdin\n", FROM_SHELL="shell-value",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ag_0001\n"
    (post,) = [r for r in standin.requests if r["method"] == "POST"]
    assert post["headers"]["idempotency-key"] == "build-42"
    assert post["json"] == {
        "model": "echo", "prompt": "prompt from\nstdin\n", "tools": ["python", "shell", "browser_server"],
        "ttl_seconds": 2700, "env": {"FOO": "bar=baz"}, "secrets": {"TOKEN": "s3cret", "FROM_SHELL": "shell-value"},
        "metadata": {"ci_run": "42"}, "token_budget": 2000,
    }  # fmt: skip


def test_run_json_prints_the_agent_and_without_a_key_sends_one_of_its_own(standin: StandIn) -> None:
    proc = run_cli(standin, "run", "--model", "echo", "--json", "hi")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == "ag_0001"
    assert standin.requests[-1]["headers"]["idempotency-key"].startswith("cli-")


@pytest.mark.parametrize(
    ("plan", "code"),
    [
        (Plan(final_status="failed", exit_code=7, reason="exit"), 7),
        (Plan(final_status="failed", exit_code=None, reason="launch_failed", error="image missing"), 1),
        (Plan(final_status="expired", exit_code=137, reason="ttl_expired"), 124),
        (Plan(final_status="cancelled", exit_code=None, reason="cancelled"), 130),
    ],
)
def test_follow_exit_code_mirrors_the_agent(standin: StandIn, plan: Plan, code: int) -> None:
    plan.lines = numbered(3)
    standin.plans["p"] = plan
    proc = run_cli(standin, "run", "--model", "echo", "--follow", "p")
    assert proc.returncode == code
    assert proc.stdout == "line 1\nline 2\nline 3\n"
    assert proc.stderr.startswith(f"agentfactory: agent ag_0001 {plan.final_status} (")
    if plan.error:
        assert proc.stderr.strip().endswith(": image missing")


def test_dropped_stream_mid_event_resumes_without_loss_or_duplicates(standin: StandIn) -> None:
    standin.plans["drops"] = Plan(lines=numbered(300), line_interval=0.002, drop_after={50, 51, 200})
    proc = run_cli(standin, "run", "--model", "echo", "--follow", "drops")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"line {i}" for i in range(1, 301)]
    assert proc.stderr == ""  # not a terminal: nothing decorative
    resumes = [o["last_event_id"] for o in standin.stream_opens]
    assert resumes == [None, "50", "51", "200"]


def test_server_restart_while_following(standin: StandIn) -> None:
    standin.plans["long"] = Plan(lines=numbered(400), line_interval=0.01)
    proc = subprocess.Popen(
        [AGENTFACTORY, "run", "--model", "echo", "--follow", "long"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(standin),
    )  # fmt: skip
    try:
        wait_for(lambda: standin.stream_opens and (a := standin.agent_for("long")) and a.visible() > 100)
        standin.restart(down_for=1.5)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"line {i}" for i in range(1, 401)]
    assert len(standin.stream_opens) >= 2 and standin.stream_opens[-1]["last_event_id"] is not None


def test_lines_the_stream_skipped_are_fetched_from_the_pages(standin: StandIn) -> None:
    standin.plans["gappy"] = Plan(lines=numbered(250), stream_skips={5, 6, 7, 120, 249, 250})
    proc = run_cli(standin, "run", "--model", "echo", "--follow", "gappy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"line {i}" for i in range(1, 251)]


def test_text_with_unicode_line_separators_stays_one_line(standin: StandIn) -> None:
    odd = "a\u2028b\u0085c — ünïcödé ✓"
    standin.plans["odd"] = Plan(lines=[("stdout", odd), ("stdout", "next")])
    proc = subprocess.run(
        [AGENTFACTORY, "run", "--model", "echo", "--follow", "odd"],
        capture_output=True, env=cli_env(standin), timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"{odd}\nnext\n"


def test_follow_json_emits_one_json_object_per_line(standin: StandIn) -> None:
    standin.plans["j"] = Plan(lines=[("stdout", "out"), ("stderr", "err")], final_status="failed", exit_code=3)
    proc = run_cli(standin, "run", "--model", "echo", "--follow", "--json", "j")
    assert proc.returncode == 3
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in events][:3] == ["created", "log", "log"]
    assert [e.get("text") for e in events[1:3]] == ["out", "err"]
    assert events[-1]["event"] == "end" and events[-1]["agent"]["exit_code"] == 3
    assert proc.stderr == ""


def test_result_file_is_written_after_the_end(standin: StandIn, tmp_path: Any) -> None:
    target = tmp_path / "result.json"
    proc = run_cli(standin, "run", "--model", "echo", "--follow", "--result-file", str(target), "r")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(target.read_text())["status"] == "succeeded"


def _interruptible() -> None:
    """In the child before it runs: Ctrl-C's default disposition. A test run started in the
    background of a non-interactive shell (a CI script's `cmd &`) ignores SIGINT, the child would
    inherit that, and Python installs no KeyboardInterrupt handler for a signal ignored at start."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_running_agent(standin: StandIn, *extra: str) -> subprocess.Popen[str]:
    standin.plans["forever"] = Plan(lines=numbered(5), final_status="running")
    proc = subprocess.Popen(
        [AGENTFACTORY, "run", "--model", "echo", "--follow", *extra, "forever"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(standin),
        preexec_fn=_interruptible,
    )  # fmt: skip
    wait_for(lambda: len(standin.stream_opens) == 1)
    time.sleep(0.3)  # the first lines are printed; the CLI is waiting on the open stream
    return proc


def test_interrupt_cancels_the_agent_and_exits_130(standin: StandIn) -> None:
    proc = _start_running_agent(standin)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert out == "".join(f"line {i}\n" for i in range(1, 6))
    assert [r["path"] for r in standin.requests if r["method"] == "DELETE"] == ["/agents/ag_0001"]
    assert standin.agents["ag_0001"].status() == "cancelled"
    assert "cancelling ag_0001" in err


def test_sigterm_is_handled_like_an_interrupt(standin: StandIn) -> None:
    proc = _start_running_agent(standin)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert standin.agents["ag_0001"].status() == "cancelled"


def test_detach_on_interrupt_leaves_the_agent_running(standin: StandIn) -> None:
    proc = _start_running_agent(standin, "--detach-on-interrupt")
    try:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert not [r for r in standin.requests if r["method"] == "DELETE"]
    assert standin.agents["ag_0001"].status() == "running"


def test_live_status_line_only_on_a_terminal_stderr(standin: StandIn) -> None:
    standin.plans["tty"] = Plan(lines=numbered(40), line_interval=0.03)
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [AGENTFACTORY, "run", "--model", "echo", "--follow", "tty"],
            stdout=subprocess.PIPE, stderr=slave, env=cli_env(standin), timeout=30, check=False,
        )  # fmt: skip
    finally:
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)
    assert proc.returncode == 0
    assert proc.stdout.decode().splitlines() == [f"line {i}" for i in range(1, 41)]
    tty_text = b"".join(chunks).decode()
    assert "ag_0001" in tty_text and "\x1b[2K" in tty_text
    assert tty_text.endswith("\r\x1b[2K")  # the status line is erased at the end


def test_follower_gives_up_after_its_reconnect_window(standin: StandIn) -> None:
    standin.plans["gone"] = Plan(lines=numbered(3), final_status="running")
    with ApiClient(standin.url, API_KEY) as client:
        agent = client.create_agent({"model": "echo", "prompt": "gone"})
        seen: list[int] = []
        retries: list[str] = []
        follower = AgentFollower(
            client, agent["id"], on_line=lambda line: seen.append(line["seq"]),
            on_retry=lambda attempt, delay, cause: retries.append(cause), reconnect_window=1.0,
        )  # fmt: skip
        killer = threading.Timer(0.5, standin.stop)
        killer.start()
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="gave up reconnecting"):
            follower.run()
        killer.join()
        standin.start()  # for the fixture's teardown
    assert seen == [1, 2, 3]
    assert retries and time.monotonic() - started < 10


def test_follower_with_tail_resumes_by_seq(standin: StandIn) -> None:
    standin.plans["t"] = Plan(lines=numbered(100), drop_after={95})
    with ApiClient(standin.url, API_KEY) as client:
        agent = client.create_agent({"model": "echo", "prompt": "t"})
        seen: list[int] = []
        AgentFollower(client, agent["id"], on_line=lambda line: seen.append(line["seq"]), tail=10).run()
    assert seen == list(range(91, 101))
    assert standin.stream_opens == [{"last_event_id": None, "tail": "10"}, {"last_event_id": "95", "tail": None}]


def test_follower_max_seconds_bounds_a_stream_that_never_ends(standin: StandIn) -> None:
    standin.plans["endless"] = Plan(lines=numbered(2), final_status="running")
    with ApiClient(standin.url, API_KEY) as client:
        agent = client.create_agent({"model": "echo", "prompt": "endless"})
        follower = AgentFollower(client, agent["id"], on_line=lambda line: None)
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="no end within"):
            follower.run(max_seconds=1)
    assert time.monotonic() - started < 6
    assert follower.last_seq == 2
