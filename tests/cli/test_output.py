"""What the terminal sees: the `--follow` status line only where it can be drawn, never a control code
elsewhere, and a client that starts without the server stack."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading

from tests.cli.conftest import AGENTFACTORY, cli_env, run_cli
from tests.cli.standin import Plan, StandIn

ESC = "\x1b["
LINES = [("stdout", f"line {i}") for i in range(1, 31)] + [("stderr", "warning: on stderr")]


def _follow_on_a_terminal(standin: StandIn, *, stdout_too: bool, **env: str) -> tuple[int, str, str]:
    """`run --follow` with stderr (and, with `stdout_too`, stdout) on a pseudo-terminal; returns the
    exit code, what stdout's pipe got, and what the terminal got."""
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
            stdout=slave if stdout_too else subprocess.PIPE, stderr=slave, env=cli_env(standin, **env),
            timeout=30, check=False,
        )  # fmt: skip
    finally:
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)
    return proc.returncode, (proc.stdout or b"").decode(), b"".join(chunks).decode()


def test_no_color_on_a_terminal_means_no_status_line_and_no_escape_sequence(standin: StandIn) -> None:
    # Long enough (0.9 s) that a status line would have been drawn several times.
    standin.plans["tty"] = Plan(lines=LINES, line_interval=0.03, final_status="failed", exit_code=4)
    code, _, tty_text = _follow_on_a_terminal(standin, stdout_too=True, NO_COLOR="1")
    assert code == 4
    assert ESC not in tty_text
    assert tty_text.splitlines()[:30] == [f"line {i}" for i in range(1, 31)]
    assert "warning: on stderr" in tty_text and "agentfactory: agent ag_0001 failed" in tty_text


def test_not_a_terminal_means_no_escape_sequence_even_when_colour_is_forced(standin: StandIn) -> None:
    standin.plans["pipe"] = Plan(lines=LINES, line_interval=0.03, final_status="failed", exit_code=4)
    proc = run_cli(standin, "run", "--model", "echo", "--follow", "pipe", FORCE_COLOR="1", TERM="xterm-256color")
    assert proc.returncode == 4
    assert ESC not in proc.stdout and ESC not in proc.stderr
    assert proc.stdout.splitlines() == [f"line {i}" for i in range(1, 31)]
    assert proc.stderr.splitlines()[0] == "warning: on stderr"


def test_the_status_line_never_cuts_a_line_of_output_on_a_shared_terminal(standin: StandIn) -> None:
    standin.plans["tty"] = Plan(lines=LINES, line_interval=0.03)
    code, _, tty_text = _follow_on_a_terminal(standin, stdout_too=True)
    assert code == 0
    assert "ag_0001 running" in tty_text  # the status line was drawn ...
    written = re.findall(r"(?:line \d+|warning: on stderr)\r\n", tty_text)
    assert written == [f"{text}\r\n" for _, text in LINES]  # ... and every line is whole, in order
    assert tty_text.endswith("\r\x1b[2K")


def test_the_client_commands_load_without_the_server_stack() -> None:
    code = "import sys, agentfactory.cli; print(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = {name.split(".")[0] for name in proc.stdout.split()}
    assert not loaded & {"fastapi", "starlette", "sqlalchemy", "docker", "uvicorn", "mcp", "alembic"}


def test_a_queued_agent_shows_its_position_and_estimated_start() -> None:
    from agentfactory.cli.render import queue_state

    assert queue_state(3, 1000.0 + 40.4, now=1000.0) == "queued, position 3, starts in ~40 s"
    assert queue_state(1, 1000.5, now=1000.0) == "queued, position 1, starts any moment"
    assert queue_state(2, None, now=1000.0) == "queued, position 2"
