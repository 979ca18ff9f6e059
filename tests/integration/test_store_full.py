"""Issue 19 item 5: a store that cannot write loses no line (SPEC §14).

The SQLite database lives on a small tmpfs that the test mounts and then fills. While it is full,
capture holds what it read and retries, the agents block on their full pipes, and /ready says the
database cannot write; once space frees, capture catches up and every seal agrees with the pages.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, prompt_as_shell, write_catalog
from tests.support.server import ServerProcess, all_log_lines, wait_terminal, wait_until

pytestmark = pytest.mark.docker

# 200,000 lines of 100 bytes (20 MB), in bursts with the agent's own clock: far more than capture
# may hold for one agent, so the agent must block while the store cannot write.
CHATTY = (
    'for b in $(seq 0 199); do echo "T $(date +%s.%N)"; '
    "seq -f \"c%g-$(printf '%0.sx' $(seq 1 80))\" $((b*1000+1)) $((b*1000+1000)); sleep 0.02; done"
)
QUIET = "for i in $(seq 1 300); do echo q$i; sleep 0.05; done"
PAD = "x" * 80


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "db"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem has no room left."""
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        with contextlib.suppress(OSError):  # the last few KB too
            while True:
                f.write(b"\0" * 4096)


def seal_of(lines: list[dict[str, Any]]) -> tuple[int, int, str]:
    h, n = hashlib.sha256(), 0
    for line in lines:
        data = line["text"].encode() + b"\n"
        h.update(data)
        n += len(data)
    return len(lines), n, h.hexdigest()


def metric(srv: ServerProcess, name: str) -> float:
    text = httpx.get(srv.url + "/metrics", timeout=30).text
    return float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith(name + " ")))


def test_a_full_disk_loses_no_line_fails_ready_and_capture_catches_up(
    make_server: type[ServerProcess], tmp_path: Path, tmpfs: Path
) -> None:
    with FakeOpenAI(prompt_as_shell()) as fake:
        catalog = write_catalog(tmp_path / "catalog.json", fake)
        env = {UPSTREAM_KEY_ENV: UPSTREAM_KEY, "AGENTFACTORY_DATABASE_URL": f"sqlite:///{tmpfs / 'agentfactory.db'}"}
        srv = make_server(catalog=catalog, env=env).start()
        with srv.client(timeout=60) as c:
            ids = {}
            for name, command in (("chatty", CHATTY), ("quiet", QUIET)):
                r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command})
                assert r.status_code == 201, r.text
                ids[name] = r.json()["id"]

            def served(agent_id: str) -> list[dict[str, Any]]:
                return all_log_lines(c, agent_id)

            wait_until(lambda: len(served(ids["chatty"])) > 1000 and served(ids["quiet"]), timeout=60,
                       what="capture under way")  # fmt: skip
            before = {name: served(agent_id) for name, agent_id in ids.items()}

            fill(tmpfs / "filler")
            ready = wait_until(lambda: (r := c.get("/ready")).status_code == 503 and r, timeout=60,
                               what="/ready to fail")  # fmt: skip
            body = ready.json()
            assert body["checks"]["database"].startswith("down: cannot write"), body
            assert "database" in body["error"]["message"]
            failures = metric(srv, "agentfactory_log_write_failures_total")
            # the writer retries with backoff (capped at 2 s): ten more failures are several seconds
            wait_until(lambda: metric(srv, "agentfactory_log_write_failures_total") >= failures + 10, timeout=90,
                       what="commits retried")  # fmt: skip
            during = {name: served(agent_id) for name, agent_id in ids.items()}
            assert c.get(f"/agents/{ids['chatty']}").json()["status"] == "running"

            (tmpfs / "filler").unlink()
            agents = {name: wait_terminal(c, agent_id, timeout=300) for name, agent_id in ids.items()}
            wait_until(lambda: c.get("/ready").status_code == 200, timeout=30, what="/ready again")

            # The quiet agent's shell may end during the outage; its next model call then fails in
            # the model gateway, whose own writes (token usage) fail too: not this test's subject.
            assert agents["chatty"]["status"] == "succeeded", agents["chatty"]
            for name, agent_id in ids.items():
                lines = served(agent_id)
                assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1))
                # what was served before and during the outage is still there, unchanged
                for earlier in (before[name], during[name]):
                    assert lines[: len(earlier)] == earlier
                texts = [x["text"] for x in lines]
                if name == "chatty":
                    assert [t for t in texts if t.startswith("c")] == [f"c{i}-{PAD}" for i in range(1, 200_001)]
                else:
                    assert [t for t in texts if t.startswith("q")] == [f"q{i}" for i in range(1, 301)]
                agent = agents[name]
                assert (agent["log_lines"], agent["log_bytes"], agent["log_sha256"]) == seal_of(lines)
                seal = c.get(f"/agents/{agent_id}/result").json()["seal"]
                assert seal["capture_complete"] is True and seal["capture_error"] is None
            # the chatty agent was held back: blocked on its full pipe while the store could not write
            clock = [float(t.split()[1]) for t in (x["text"] for x in served(ids["chatty"])) if t.startswith("T ")]
            pause = max(b - a for a, b in itertools.pairwise(clock))
            print(f"the chatty agent's longest pause between two bursts: {pause:.1f}s")
            assert pause > 3
