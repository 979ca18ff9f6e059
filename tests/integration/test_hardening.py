"""Issue 8 on the real engine: the sandbox profile as an agent sees it from inside (no network without
a network tool), resource deaths, and a prompt that tries shell injection. What agents with a network
reach is tested in test_egress.py.

Each check runs under runc and, when `docker info` lists it (scripts/setup.sh with
AGENTFACTORY_WITH_RUNSC=1), under gVisor's runsc; the probe's results are printed side by side.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, write_catalog
from tests.support.server import ServerProcess, all_log_lines, wait_terminal, wait_until

pytestmark = pytest.mark.docker

SCRATCH_MB, MEMORY_MB, PIDS = 16, 512, 128
IMAGE = "agentfactory-runtime:latest"
RUNTIMES = ("runc", "runsc")
EVIL_PROMPT = '$(touch /tmp/pwn); "; rm -rf /'

# One shell command (the `sh` model runs the prompt with the `shell` tool) printing `PROBE name=value`.
PROBE = r"""python3 - <<'EOF'
import ctypes, errno, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def name(e): return errno.errorcode.get(e, str(e))
def outcome(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return name(e.errno)
def status(field):
    return next((l.split()[1] for l in open("/proc/self/status") if l.startswith(field + ":")), "absent")
def check(rc):
    if rc != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
def fill():
    n = 0
    with open("/scratch/fill", "wb") as f:
        try:
            while True:
                f.write(b"x" * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            return "%s after %d MiB" % (name(e.errno), n)
def executable(d):
    p = d + "/run.sh"
    with open(p, "w") as f: f.write("#!/bin/sh\necho ran\n")
    os.chmod(p, 0o755)
    return outcome(lambda: subprocess.run([p], check=True, capture_output=True))
def mount():
    os.makedirs("/scratch/m", exist_ok=True); check(libc.mount(b"none", b"/scratch/m", b"tmpfs", 0, None))
def io_uring():
    fd = libc.syscall(425, 4, ctypes.create_string_buffer(120)); check(0 if fd >= 0 else -1)
mounts = [l.split() for l in open("/proc/self/mounts")]
host = [m for m in mounts if not m[1].startswith(("/proc", "/sys", "/dev"))]
gateway = [m[3].split(",")[0] for m in host if m[1] == "/run/agentfactory"]
open("/scratch/owned", "w").close()
print("PROBE uid=%d gid=%d" % (os.getuid(), os.getgid()))
print("PROBE CapEff=" + status("CapEff"))
print("PROBE CapBnd=" + status("CapBnd"))
print("PROBE NoNewPrivs=%d" % libc.prctl(39, 0, 0, 0, 0))
print("PROBE seccomp=" + status("Seccomp"))
print("PROBE touch /x=" + outcome(lambda: open("/x", "w")))
print("PROBE write /var/tmp (1777, root fs)=" + outcome(lambda: open("/var/tmp/x", "w")))
print("PROBE fill /scratch=" + fill())
os.remove("/scratch/fill")
print("PROBE exec in /scratch=" + executable("/scratch"))
print("PROBE exec in /tmp=" + executable("/tmp"))
print("PROBE raw socket=" + outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)))
print("PROBE chown=" + outcome(lambda: os.chown("/scratch/owned", 0, 0)))
print("PROBE mount=" + outcome(mount))
print("PROBE interfaces=" + ",".join(sorted(n for _, n in socket.if_nameindex())))
sockets = ("/var/run/docker.sock", "/run/docker.sock")
print("PROBE docker.sock=" + ("present" if any(os.path.exists(p) for p in sockets) else "absent"))
print("PROBE gateway mount=" + ",".join(gateway))
print("PROBE mount points=" + ",".join(sorted(m[1] for m in host)))
print("PROBE cgroup path=" + (open("/proc/self/cgroup").readline().strip().split(":")[-1] or "(none)"))
print("PROBE io_uring_setup (info)=" + outcome(io_uring))
EOF"""

# What every runtime must show. gVisor checks the caller's permission on `/` before the read-only
# mount (EACCES); the world-writable /var/tmp on the same root is what proves the root read-only.
EXPECTED: dict[str, str | set[str]] = {
    "uid": "10001 gid=10001",
    "CapEff": "0000000000000000",
    "CapBnd": "0000000000000000",
    "NoNewPrivs": "1",
    "touch /x": {"EROFS", "EACCES"},
    "write /var/tmp (1777, root fs)": "EROFS",
    "fill /scratch": {f"ENOSPC after {SCRATCH_MB} MiB", f"ENOSPC after {SCRATCH_MB - 1} MiB"},
    "exec in /scratch": "ok",
    "exec in /tmp": "EACCES",
    "raw socket": "EPERM",
    "chown": "EPERM",
    "mount": "EPERM",
    "interfaces": "lo",
    "docker.sock": "absent",
    "gateway mount": "ro",
    "cgroup path": "/",
}
# runc: Docker's default seccomp profile filters the agent's syscalls (mode 2). runsc: the agent's
# syscalls are served by gVisor's own kernel, which itself runs under gVisor's host seccomp filter;
# the OCI profile is not loaded inside (--oci-seccomp breaks thread creation in this runsc).
PER_RUNTIME: dict[str, dict[str, str | set[str]]] = {
    "runc": {"touch /x": "EROFS", "seccomp": "2"},
    "runsc": {"seccomp": "0", "cgroup path": {"(none)", "/"}},  # gVisor shows no cgroups at all
}
# Docker's own per-container files (and its init binary) are the only other host files an agent sees.
ALLOWED_MOUNT_POINTS = {
    *("/", "/scratch", "/tmp", "/run/agentfactory"),
    *("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/sbin/docker-init", "/usr/sbin/docker-init"),
}


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def registered_runtimes() -> set[str]:
    return set(json.loads(docker("info", "--format", "{{json .Runtimes}}") or "{}"))


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI, docker_engine: None
) -> Iterator[dict[str, ServerProcess]]:
    """One server per available runtime, same catalog: small scratch, memory and PIDs limits."""
    runtimes = [rt for rt in RUNTIMES if rt == "runc" or rt in registered_runtimes()]
    started: dict[str, ServerProcess] = {}
    try:
        for rt in runtimes:
            work = tmp_path_factory.mktemp(f"hardening-{rt}")
            catalog = write_catalog(
                work / "catalog.json", upstream, limits={"scratch_mb": SCRATCH_MB, "memory_mb": MEMORY_MB, "pids": PIDS}
            )
            env = {UPSTREAM_KEY_ENV: UPSTREAM_KEY}
            if rt != "runc":
                env["AGENTFACTORY_CONTAINER_RUNTIME"] = rt
            started[rt] = ServerProcess(work, catalog=catalog, env=env).start()
        yield started
    finally:
        for srv in started.values():
            srv.stop()
            srv.cleanup_containers()


def server_for(servers: dict[str, ServerProcess], runtime: str) -> ServerProcess:
    if runtime not in servers:
        pytest.skip(f"{runtime} is not registered with Docker (AGENTFACTORY_WITH_RUNSC=1 bash scripts/setup.sh)")
    return servers[runtime]


def start(c: httpx.Client, command: str, tools: tuple[str, ...] = ("shell",), **extra: Any) -> dict[str, Any]:
    r = c.post("/agents", json={"model": "sh", "tools": list(tools), "prompt": command, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def texts(c: httpx.Client, agent_id: str) -> list[str]:
    return [line["text"] for line in all_log_lines(c, agent_id)]


def run_to_end(srv: ServerProcess, command: str, **kw: Any) -> tuple[dict[str, Any], list[str]]:
    with srv.client() as c:
        agent = wait_terminal(c, start(c, command, **kw)["id"], timeout=90)
        return agent, texts(c, agent["id"])


def probe_results(lines: list[str]) -> dict[str, str]:
    pairs = (line.removeprefix("PROBE ").split("=", 1) for line in lines if line.startswith("PROBE "))
    return {k: v for k, v in pairs}


def test_probe_agent_sees_the_full_profile_under_runc_and_runsc(
    servers: dict[str, ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadPoolExecutor(len(servers)) as pool:
        runs = dict(zip(servers, pool.map(lambda srv: run_to_end(srv, PROBE), servers.values()), strict=True))
    results = {rt: probe_results(lines) for rt, (_, lines) in runs.items()}
    names = list(dict.fromkeys(k for r in results.values() for k in r))
    with capsys.disabled():
        print(f"\n{'check':32} | " + " | ".join(f"{rt:24}" for rt in RUNTIMES))
        print("-" * 33 + "+" + "+".join("-" * 26 for _ in RUNTIMES))
        for name in names:
            cells = [results[rt].get(name, "-") if rt in results else "(not registered)" for rt in RUNTIMES]
            print(f"{name:32} | " + " | ".join(f"{cell:24}" for cell in cells))
    for rt, (agent, lines) in runs.items():
        assert agent["status"] == "succeeded", (rt, agent, lines[-5:])
        got = results[rt]
        for check, want in {**EXPECTED, **PER_RUNTIME[rt]}.items():
            allowed = want if isinstance(want, set) else {want}
            assert got.get(check) in allowed, f"{rt}: {check} = {got.get(check)!r}, want {sorted(allowed)}"
        assert set(got["mount points"].split(",")) <= ALLOWED_MOUNT_POINTS, (rt, got["mount points"])
        assert got["uid"].split()[0] != "0"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_memory_hog_is_oom_killed_within_two_seconds_of_the_allocation(
    servers: dict[str, ServerProcess], runtime: str
) -> None:
    srv = server_for(servers, runtime)
    hog = (
        "python3 -c \"import time\nprint('ALLOC', repr(time.time()), flush=True)\nb = []\n"
        "while True: b.append(b'x' * (16 << 20))\""
    )
    agent, lines = run_to_end(srv, hog)
    assert (agent["status"], agent["reason"]) == ("failed", "oom_killed"), agent
    alloc_at = float(next(line.split()[1] for line in lines if line.startswith("ALLOC ")))
    delay = ts(agent["finished_at"]) - alloc_at
    print(f"{runtime}: allocation start → oom_killed recorded: {delay:.2f}s (limit {MEMORY_MB} MiB)")
    assert delay <= 2.0


FORK_BOMB = r"""python3 - <<'EOF'
import errno, os, time
def pids():
    for p in ("/sys/fs/cgroup/pids/pids.current", "/sys/fs/cgroup/pids.current"):
        try:
            return int(open(p).read())
        except OSError:
            pass
    return -1
root, t0, eagain, peak = os.getpid(), time.time(), 0, 0
print("FORKBOMB start", flush=True)
while time.time() - t0 < 6:
    try:
        os.fork()  # parent and child both go on forking
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise
        eagain += 1
        if os.getpid() == root:
            if eagain == 1:
                print("FORKBOMB full", flush=True)
            peak = max(peak, pids())
        time.sleep(0.02)
if os.getpid() != root:
    os._exit(0)
print("FORKBOMB eagain=%d peak=%d" % (eagain, peak), flush=True)
EOF"""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fork_bomb_is_bounded_and_the_server_and_other_agents_carry_on(
    servers: dict[str, ServerProcess], runtime: str
) -> None:
    srv = server_for(servers, runtime)
    health_failures: list[str] = []
    health_worst = 0.0
    stop = threading.Event()

    def poll_health() -> None:
        nonlocal health_worst
        with httpx.Client(timeout=2) as h:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    if h.get(srv.url + "/health").status_code != 200:
                        health_failures.append("non-200")
                except httpx.HTTPError as exc:
                    health_failures.append(repr(exc))
                health_worst = max(health_worst, time.monotonic() - t0)
                stop.wait(0.05)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        with srv.client() as c:
            t0 = time.monotonic()
            calm = c.post("/agents", json={"model": "echo", "prompt": "before the bomb"})
            calm_start = time.monotonic() - t0
            assert calm.status_code == 201, calm.text
            bomb = start(c, FORK_BOMB)
            terminal = {"succeeded", "failed", "cancelled", "expired"}
            # runc: wait until the PIDs limit pushes back; runsc: the sandbox may die before it says so.
            marker = "FORKBOMB full" if runtime == "runc" else "FORKBOMB start"
            wait_until(
                lambda: marker in texts(c, bomb["id"]) or c.get(f"/agents/{bomb['id']}").json()["status"] in terminal,
                timeout=30,
                what="fork bomb under way",
            )
            t0 = time.monotonic()
            other = c.post("/agents", json={"model": "echo", "prompt": "still here"})
            other_start = time.monotonic() - t0
            assert other.status_code == 201 and other.json()["status"] == "running", other.text
            bombed = wait_terminal(c, bomb["id"], timeout=60)
            lines = texts(c, bomb["id"])
            assert wait_terminal(c, other.json()["id"], timeout=30)["status"] == "succeeded"
    finally:
        stop.set()
        poller.join(5)
    report = next((line for line in lines if line.startswith("FORKBOMB eagain=")), "(no report)")
    print(
        f"{runtime}: fork bomb → {bombed['status']}/{bombed['reason']} {report}; another agent running in "
        f"{other_start:.2f}s (before the bomb: {calm_start:.2f}s); /health worst {health_worst * 1000:.0f} ms"
    )
    assert not health_failures, health_failures
    # < 2 s on a machine at rest; on one already loaded by others, no worse than 3x the launch just before.
    assert other_start < max(2.0, 3 * calm_start)
    if runtime == "runc":
        assert bombed["status"] == "succeeded", bombed
        fields = dict(kv.split("=") for kv in report.split()[1:])
        assert int(fields["eagain"]) > 0 and 0 < int(fields["peak"]) <= PIDS
    else:
        # gVisor's sentry needs a host process per address space: at the PIDs limit the whole sandbox
        # dies (runsc exit 2), or the memory limit goes first. Either way a classified resource death.
        assert bombed["status"] == "failed" and bombed["reason"] in ("sandbox_died", "oom_killed"), bombed


DISK_FILL = r"""python3 - <<'EOF'
import errno, time
n = 0
try:
    with open("/scratch/fill", "wb") as f:
        while True:
            f.write(b"x" * (1 << 20)); f.flush(); n += 1
except OSError as e:
    print("FILLED %s after %d MiB" % (errno.errorcode[e.errno], n), flush=True)
for p in ("/var/tmp/fill", "/fill"):
    try:
        open(p, "wb").write(b"x" * (1 << 20))
    except OSError as e:
        print("ROOT %s %s" % (p, errno.errorcode[e.errno]), flush=True)
time.sleep(8)  # the test measures the container's writable layer meanwhile
EOF"""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_disk_fill_hits_enospc_and_leaves_the_host_layer_unchanged(
    servers: dict[str, ServerProcess], runtime: str
) -> None:
    srv = server_for(servers, runtime)
    with srv.client() as c:
        agent = start(c, DISK_FILL)
        lines = wait_until(
            lambda: (got := texts(c, agent["id"])) and any(x.startswith("ROOT /fill") for x in got) and got,
            timeout=30,
            what="disk fill done",
        )
        name = f"agentfactory-{agent['id']}"
        size_rw = int(docker("inspect", "--size", "--format", "{{.SizeRw}}", name))
        upper = docker("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", name)
        upper_bytes = int(subprocess.run(["du", "-sb", upper], capture_output=True, text=True).stdout.split()[0])
        c.delete(f"/agents/{agent['id']}")
    filled = next(x for x in lines if x.startswith("FILLED"))
    print(f"{runtime}: {filled}; container layer SizeRw={size_rw} B, upper dir {upper_bytes} B")
    assert filled in (f"FILLED ENOSPC after {SCRATCH_MB} MiB", f"FILLED ENOSPC after {SCRATCH_MB - 1} MiB")
    assert any(x.startswith("ROOT /var/tmp/fill EROFS") for x in lines), lines
    assert size_rw == 0
    assert upper_bytes < 64 * 1024  # an empty overlay upper dir: directory entries only


# Network agents (what they reach and what they do not: the host, metadata, private ranges, another
# agent, the public internet) are tested in test_egress.py, against a stand-in internet of its own.


def test_hostile_prompt_and_env_reach_the_agent_as_data(servers: dict[str, ServerProcess]) -> None:
    srv = servers["runc"]
    host_pwn = Path("/tmp/pwn")
    before = host_pwn.stat().st_mtime_ns if host_pwn.exists() else None
    with srv.client() as c:
        echoed = wait_terminal(c, c.post("/agents", json={"model": "echo", "prompt": EVIL_PROMPT}).json()["id"])
        events = [json.loads(x) for x in texts(c, echoed["id"]) if x.startswith("{")]
    assert echoed["status"] == "succeeded", echoed
    assert [e["content"] for e in events if e.get("event") == "final"] == [EVIL_PROMPT]
    # The same bytes as an env value: the launch path into the container runs no shell over them.
    check = (
        'python3 -c \'import os, json; print("ENV", json.dumps(os.environ["EVIL"]))\'; '
        "test -e /tmp/pwn && echo PWNED || echo CLEAN; ls / | wc -l"
    )
    agent, lines = run_to_end(srv, check, env={"EVIL": EVIL_PROMPT})
    assert agent["status"] == "succeeded", agent
    assert f"ENV {json.dumps(EVIL_PROMPT)}" in lines
    assert "CLEAN" in lines and "PWNED" not in lines
    after = host_pwn.stat().st_mtime_ns if host_pwn.exists() else None
    assert after == before, "something touched /tmp/pwn on the host"
