"""A Docker Engine of the test's own: its own socket, data root, exec root, pid file and trust key
(so its own engine ID), no bridge and no iptables rules. Tests that stop and restart an engine use
one of these, never the machine's shared engine that other tests run on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.server import wait_until

RUNTIME_IMAGE = os.environ.get("AGENTFACTORY_RUNTIME_IMAGE", "agentfactory-runtime:latest")


class PrivateEngine:
    def __init__(self, root: Path | None = None):
        # Unix socket paths are limited to 107 bytes: a short directory under /tmp.
        self.root = root or Path(tempfile.mkdtemp(prefix="afe-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.root / "docker.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self.live_restore = False

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

    def start(self, *, live_restore: bool = False, timeout: float = 60) -> float:
        """Start dockerd; returns the moment it answers (time.time())."""
        self.live_restore = live_restore
        config = {"deprecated-key-path": str(self.root / "key.json"), "live-restore": live_restore}
        (self.root / "daemon.json").write_text(json.dumps(config))
        self.pidfile.unlink(missing_ok=True)  # a stale pid file stops dockerd from starting
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - kept open for the child's life
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.pidfile), "-H", self.host, "--bridge", "none", "--iptables=false",
             "--ip-masq=false", "--config-file", str(self.root / "daemon.json")],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_until(self.answers, timeout=timeout, interval=0.1, what="the private dockerd answers")
        return time.time()

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
        if self.cli("images", "-q", image).strip():
            return
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        save.wait(60)

    def engine_id(self) -> str:
        return self.cli("info", "--format", "{{.ID}}").strip()

    def destroy(self) -> None:
        """Remove every container, stop the engine, delete its files."""
        try:
            if self.proc is None and not self.answers():
                self.start()
            ids = self.cli("ps", "-aq", check=False).split()
            if ids:
                self.cli("rm", "-f", *ids, check=False)
        finally:
            self.stop()
            # dockerd leaves its data root mounted on itself after it stops.
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
            for mount in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
            shutil.rmtree(self.root, ignore_errors=True)
