"""Issue 19 items 6 and 8 on the real server: secrets stay out of our log and out of captured output
however they are printed; bodies and keys that should be refused are (SPEC §14, §3)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, prompt_as_shell, write_catalog
from tests.support.db import inserts_refused
from tests.support.server import ROOT, ServerProcess, all_log_lines, free_port, wait_terminal, wait_until
from tests.support.sse import read_stream

pytestmark = pytest.mark.docker

PEM = (
    "-----BEGIN TEST PRIVATE KEY-----\n"
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
    "-----END TEST PRIVATE KEY-----"
)
CUT_TOKEN = "ghp_Cut5ecretQ7Zx2Lm9Wv"
MAX_LINE = 65_536


def run(c: httpx.Client, command: str, **extra: object) -> str:
    r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command, **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def texts_of(c: httpx.Client, agent_id: str) -> tuple[list[str], list[str]]:
    """(texts in pages, texts in the stream) of a finished agent."""
    streamed, end = read_stream(c, agent_id)
    assert end is not None
    return [x["text"] for x in all_log_lines(c, agent_id)], [x["text"] for x in streamed]


def test_a_secret_across_the_64k_cut_and_a_pem_over_lines_are_masked(shell_server: ServerProcess) -> None:
    # A line of 65,530 x, the token, 100 y: the engine's 64 KiB cut falls inside the token. A
    # 3-line key printed a line per write (a read each, 0.3 s apart) and once in one write.
    long_line = "python3 -c \"import os,sys; sys.stdout.write('x'*65530 + os.environ['CUT'] + 'y'*100 + chr(10))\""
    line_by_line = (
        'python3 -c "import os,time; '
        "[(print(l, flush=True), time.sleep(0.3)) for l in os.environ['PEM'].split(chr(10))]\""
    )
    command = f"echo begin; {long_line}; echo middle; {line_by_line}; printf '%s\\n' \"$PEM\"; echo end"
    with shell_server.client(timeout=60) as c:
        agent_id = run(c, command, secrets={"CUT": CUT_TOKEN, "PEM": PEM})
        agent = wait_terminal(c, agent_id, timeout=60)
        assert agent["status"] == "succeeded", agent
        for texts in texts_of(c, agent_id):
            out = texts[texts.index("begin") : texts.index("end") + 1]
            masked = "x" * 65530 + "***" + "y" * 100
            assert out == ["begin", masked[:MAX_LINE], masked[MAX_LINE:], "middle", *["***"] * 6, "end"]
            whole = "\n".join(texts)
            assert CUT_TOKEN not in whole and CUT_TOKEN[:6] not in whole and CUT_TOKEN[-6:] not in whole
            assert all(line not in whole for line in PEM.split("\n"))


def test_the_gateway_token_is_masked_after_a_restart(make_server: type[ServerProcess], tmp_path: Path) -> None:
    # A tool cannot see the token in its own environment, but can read the runtime's.
    show = "tr '\\0' '\\n' < /proc/1/environ | grep '^AGENTFACTORY_GATEWAY_TOKEN='"
    with FakeOpenAI(prompt_as_shell()) as fake:
        catalog = write_catalog(tmp_path / "catalog.json", fake)
        srv = make_server(catalog=catalog, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY}).start()
        with srv.client() as c:
            agent_id = run(c, f"while true; do {show}; sleep 0.3; done")

            def printed() -> list[str]:
                return [
                    x["text"] for x in all_log_lines(c, agent_id) if x["text"].startswith("AGENTFACTORY_GATEWAY_TOKEN=")
                ]

            before = len(wait_until(printed, timeout=30, what="the token printed"))
        srv.kill()
        srv.start()
        with srv.client() as c:
            wait_until(lambda: len(printed()) >= before + 5, timeout=30, what="lines captured after the restart")
            assert c.delete(f"/agents/{agent_id}").status_code == 200
            for texts in texts_of(c, agent_id):
                tokens = [t for t in texts if t.startswith("AGENTFACTORY_GATEWAY_TOKEN=")]
                assert len(tokens) >= before + 5
                assert set(tokens) == {"AGENTFACTORY_GATEWAY_TOKEN=***"}, tokens[:3]


def test_a_database_error_during_create_logs_neither_secret_nor_prompt(server: ServerProcess) -> None:
    secret, prompt = "sk-live-Wq9TrXv2Lm7Np4Kd", "summarise the quarterly numbers of ACME-7731"
    seen = len(server.log_lines())
    with inserts_refused(server.env["AGENTFACTORY_DATABASE_URL"], "agents"):
        with server.client() as c:  # uvicorn closes the connection after an unhandled error
            r = c.post("/agents", json={"model": "echo", "prompt": prompt, "secrets": {"API_TOKEN": secret}})
        with server.client() as c:
            metrics = c.get("/metrics").text
    assert r.status_code == 500 and r.json()["error"]["code"] == "E_INTERNAL", r.text
    assert secret not in r.text and prompt not in r.text and secret not in metrics
    during = server.log_lines()[seen:]
    failure = next(json.loads(line) for line in during if '"unhandled_error"' in line)
    # SQLite's message is the trigger's; PostgreSQL's may quote a row, so only its SQLSTATE is logged.
    why = "refused" if server.env["AGENTFACTORY_DATABASE_URL"].startswith("sqlite") else "SQLSTATE 23514"
    assert "IntegrityError" in failure["exception"] and why in failure["exception"], failure["exception"]
    log = "\n".join(server.log_lines())
    assert secret not in log and prompt not in log
    assert failure["request_id"] == r.json()["request_id"]


def test_a_chunked_body_over_the_limit_is_413(server: ServerProcess) -> None:
    """20 MiB sent chunked (no Content-Length to refuse it by): the answer comes once 1 MiB is read."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        f"POST /agents HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.admin_key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    piece = b"x" * 65_536
    frame = b"%x\r\n%s\r\n" % (len(piece), piece)

    def send() -> None:
        try:
            for _ in range(20 * 16):
                sock.sendall(frame)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed while we were still sending
            pass

    sender = threading.Thread(target=send)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65_536)
            assert more, f"connection closed without an answer: {answer!r}"
            answer += more
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += sock.recv(65_536)
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        sender.join(30)
    assert head.split(b" ")[1] == b"413", head
    assert json.loads(body)["error"]["code"] == "E_TOO_LARGE"


def test_a_short_bootstrap_admin_key_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    short = "af_admin_short1234"
    env = ServerProcess(tmp_path).env | {"AGENTFACTORY_ADMIN_KEY": short, "AGENTFACTORY_PORT": str(free_port())}
    code = "from agentfactory.settings import Settings; from agentfactory.server import serve; serve(Settings())"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "AGENTFACTORY_ADMIN_KEY" in done.stderr and "at least 24" in done.stderr
    assert short not in done.stderr + done.stdout
