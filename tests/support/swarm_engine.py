"""A single-node Docker Swarm of the test's own: a private dockerd in a network namespace of its own.

The swarm backend requires two daemon-wide settings (docs/swarm.md): `no-new-privileges` and no
default bridge (`--bridge none`, so that a task without a network gets only `lo`). `--bridge none`
makes dockerd delete the interface named docker0 *in its network namespace*: this engine runs in a
namespace of its own (`ip netns add` + `nsenter --net`), where there is no docker0 to delete and its
iptables rules are its own; the machine's shared engine and its docker0 are never touched. It shares
the host's filesystem, so the control plane's gateway socket directory is bind-mounted as on one host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV
from tests.support.server import wait_until

RUNTIME_IMAGE = os.environ.get("AGENTFACTORY_RUNTIME_IMAGE", "agentfactory-runtime:latest")


class PrivateSwarm:
    def __init__(self, *, no_new_privileges: bool = True, init_swarm: bool = True):
        self.root = Path(tempfile.mkdtemp(prefix="afsw-", dir="/tmp"))  # unix socket paths are short
        self.netns = "afsw-" + uuid.uuid4().hex[:8]
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.no_new_privileges = no_new_privileges
        self.init_swarm = init_swarm
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        out = subprocess.run(
            ["docker", "-H", self.host, *args], capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and out.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {out.stderr}")
        return out.stdout

    def answers(self) -> bool:
        try:
            cmd = ["docker", "-H", self.host, "version"]
            return subprocess.run(cmd, capture_output=True, check=False, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self, image: str = RUNTIME_IMAGE) -> PrivateSwarm:
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        (self.root / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - kept open for the child's life
        flags = ["--no-new-privileges"] if self.no_new_privileges else []
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "dockerd", "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"), "-H", self.host,
             "--bridge", "none", "--config-file", str(self.root / "daemon.json"), *flags],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_until(self.answers, timeout=60, interval=0.1, what="the private dockerd answers")
        if self.init_swarm:
            self.cli("swarm", "init", "--advertise-addr", "127.0.0.1")
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        save.wait(60)
        return self

    def services(self, instance: str) -> list[str]:
        return self.cli("service", "ls", "-q", "--filter", f"label=io.agentfactory.instance={instance}").split()

    def containers(self, instance: str) -> list[str]:
        return self.cli("ps", "-aq", "--filter", f"label=io.agentfactory.instance={instance}").split()

    def destroy(self) -> None:
        try:
            if self.proc is not None and self.answers():
                ids = self.cli("service", "ls", "-q", check=False).split()
                if ids:
                    self.cli("service", "rm", *ids, check=False)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
            for mount in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
            shutil.rmtree(self.root, ignore_errors=True)


def swarm_env(swarm: PrivateSwarm, **extra: str) -> dict[str, str]:
    """The environment of a control plane under test that runs its agents on `swarm`."""
    return {
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
        "DOCKER_HOST": swarm.host,
        "AGENTFACTORY_BACKEND": "swarm",
        "AGENTFACTORY_SWARM_PLACEMENT_SECONDS": "3",
        **extra,
    }
