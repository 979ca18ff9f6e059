"""A dockerd of the test's own in a network namespace of its own: what a private engine
(engine.py) and a private swarm (swarm_engine.py) have in common.

Its own socket, data root, exec root, pid file and trust key (so its own engine ID), and its own
network namespace (`ip netns add` + `nsenter --net`): whatever it does to interfaces and iptables
stays in that namespace (a dockerd started with `--bridge none` deletes the interface named docker0,
moby's removeDefaultBridgeInterface; there is none in its namespace), so the machine's shared engine
and its bridge are never within its reach. The filesystem is shared: the control plane's gateway
socket, a Unix socket, crosses namespaces. Everything it made in its namespace goes with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.server import wait_until

RUNTIME_IMAGE = os.environ.get("AGENTFACTORY_RUNTIME_IMAGE", "agentfactory-runtime:latest")


class PrivateDockerd:
    """`prefix` names its directory under /tmp (`<prefix>XXXXXXXX`) and its network namespace (the
    same name): short, as Unix socket paths are at most 107 bytes."""

    def __init__(self, prefix: str, root: Path | None = None):
        self.root = root or Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.suffix = self.root.name.removeprefix(prefix)[-8:]
        self.netns = prefix + self.suffix
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.root / "docker.pid"
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

    def make_netns(self) -> None:
        if not Path("/run/netns", self.netns).exists():
            subprocess.run(["ip", "netns", "add", self.netns], capture_output=True, text=True, check=True)
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], capture_output=True, check=True)

    def run_dockerd(self, *flags: str, config: dict[str, Any] | None = None, timeout: float = 60) -> None:
        """Start dockerd in the namespace (made first if need be) with `flags` and daemon.json
        `config`, and wait until it answers."""
        self.make_netns()
        config = {"deprecated-key-path": str(self.root / "key.json"), **(config or {})}
        (self.root / "daemon.json").write_text(json.dumps(config))
        self.pidfile.unlink(missing_ok=True)  # a stale pid file stops dockerd from starting
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - kept open for the child's life
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}",
             "dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.pidfile), "-H", self.host, "--config-file", str(self.root / "daemon.json"),
             *flags],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_until(self.answers, timeout=timeout, interval=0.1, what="the private dockerd answers")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as a service manager stops it (without live-restore it stops its containers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def load_image(self, image: str = RUNTIME_IMAGE) -> None:
        """The machine's image, loaded into this engine (the same ID) unless it has it already."""
        if self.cli("images", "-q", image).strip():
            return
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        save.wait(60)

    def remove_namespace_and_files(self) -> None:
        """After `stop`: the namespace (and what dockerd made in it) and the files; dockerd leaves its
        data root mounted on itself after it stops."""
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
