"""A Docker Engine of the test's own: its own socket, data root, exec root, pid file and trust key
(so its own engine ID), its own network namespace with its own bridge and address pool, no iptables
rules. Tests that stop and restart an engine use one of these, never the machine's shared engine
that other tests run on.

The dockerd runs in a network namespace of its own (`ip netns add` + `nsenter --net`, like
swarm_engine.py): whatever it does to interfaces (a dockerd started with `--bridge none` deletes the
interface named docker0, moby's removeDefaultBridgeInterface) stays in that namespace, where there is
no docker0; the machine's shared engine's bridge is never within its reach. Its agents reach the
control plane's gateway by its Unix socket (the filesystem is shared), which crosses namespaces.
Its bridge (`afb-…`) and address block are still its own, made in its namespace, and everything it
made there goes with the namespace."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.server import wait_until

RUNTIME_IMAGE = os.environ.get("AGENTFACTORY_RUNTIME_IMAGE", "agentfactory-runtime:latest")
HOST_BRIDGE = Path("/sys/class/net/docker0")  # the machine's shared engine's bridge
CLAIMS = Path("/tmp/afe-nets")  # one file per address block a live private engine holds: its pid
BLOCKS = [ipaddress.IPv4Network(f"10.{a}.{b}.0/19") for a in range(200, 250) for b in range(0, 256, 32)]


@contextlib.contextmanager
def _claims_locked() -> Iterator[None]:
    CLAIMS.mkdir(exist_ok=True)
    with open(CLAIMS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network a route or an address of this machine covers (the default route aside)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    found = [ipaddress.ip_interface(line.split()[3]).network for line in out.splitlines()]
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True)
    for line in routes.stdout.splitlines():
        for word in line.split()[:2]:  # "10.0.0.0/8 dev …", or after the type: "local 127.0.0.0/8 …"
            with contextlib.suppress(ValueError):
                found.append(ipaddress.ip_network(word, strict=False))
                break
    return [n for n in found if isinstance(n, ipaddress.IPv4Network)]


def claim_block(pid: int) -> ipaddress.IPv4Network:
    """A /19 that overlaps no route or address here and no live private engine's block."""
    with _claims_locked():
        in_use = _networks_in_use()
        for block in BLOCKS:
            claim = CLAIMS / str(block).replace("/", "_")
            if claim.exists():
                try:
                    holder = int(claim.read_text() or "0")
                except ValueError:
                    holder = 0
                if holder and _alive(holder):
                    continue
            if any(block.overlaps(n) for n in in_use):
                continue
            claim.write_text(str(pid))
            return block
    raise RuntimeError("no free 10.200-249.x.0/19 block for a private dockerd")


def release_block(block: ipaddress.IPv4Network) -> None:
    with _claims_locked():
        (CLAIMS / str(block).replace("/", "_")).unlink(missing_ok=True)


def link_exists(name: str, netns: str | None = None) -> bool:
    if netns is None:
        return Path("/sys/class/net", name).exists()
    out = subprocess.run(["ip", "-n", netns, "link", "show", name], capture_output=True, check=False)
    return out.returncode == 0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


def bridge_none_dockerds() -> list[str]:
    """The command lines of running dockerds started with `--bridge none` (never this module's)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
            if (
                args
                and args[0].endswith("dockerd")
                and any(
                    a == "--bridge=none" or (a in ("--bridge", "-b") and b == "none")
                    for a, b in itertools.pairwise(args)
                )
            ):
                found.append(" ".join(args)[:200])
    return found


class PrivateEngine:
    def __init__(self, root: Path | None = None):
        # Unix socket paths are limited to 107 bytes: a short directory under /tmp.
        self.root = root or Path(tempfile.mkdtemp(prefix="afe-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.root / "docker.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self.live_restore = False
        self.host_bridge_existed = HOST_BRIDGE.exists()
        # Interface names are at most 15 bytes: "afb-" and mkdtemp's 8 characters.
        self.bridge = "afb-" + self.root.name.removeprefix("afe-")[-8:]
        self.netns = "afe-" + self.root.name.removeprefix("afe-")[-8:]  # made at the first start
        self.block: ipaddress.IPv4Network | None = None

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

    def _make_bridge(self) -> None:
        if not Path("/run/netns", self.netns).exists():
            ip("netns", "add", self.netns)
            ip("-n", self.netns, "link", "set", "lo", "up")
        if self.block is None:
            self.block = claim_block(os.getpid())
        if not link_exists(self.bridge, self.netns):
            first = next(self.block.subnets(new_prefix=24))
            ip("-n", self.netns, "link", "add", self.bridge, "type", "bridge")
            ip("-n", self.netns, "addr", "add", f"{first.network_address + 1}/24", "dev", self.bridge)
            ip("-n", self.netns, "link", "set", self.bridge, "up")

    def start(self, *, live_restore: bool = False, timeout: float = 60) -> float:
        """Start dockerd; returns the moment it answers (time.time())."""
        self.live_restore = live_restore
        self._make_bridge()
        assert self.block is not None
        pool = list(self.block.subnets(new_prefix=20))[1]  # the block's second half; its first /24 is the bridge's
        config = {
            "deprecated-key-path": str(self.root / "key.json"),
            "live-restore": live_restore,
            "default-address-pools": [{"base": str(pool), "size": 24}],
        }
        (self.root / "daemon.json").write_text(json.dumps(config))
        self.pidfile.unlink(missing_ok=True)  # a stale pid file stops dockerd from starting
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - kept open for the child's life
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}",
             "dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.pidfile), "-H", self.host, "--bridge", self.bridge, "--iptables=false",
             "--ip-masq=false", "--ip-forward=false", "--config-file", str(self.root / "daemon.json")],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_until(self.answers, timeout=timeout, interval=0.1, what="the private dockerd answers")
        self.assert_host_bridge_intact()
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

    def assert_host_bridge_intact(self) -> None:
        """The machine's shared engine keeps its bridge (a private dockerd once deleted it)."""
        if self.host_bridge_existed and not HOST_BRIDGE.exists():
            raise AssertionError(
                f"the host's docker0 is gone since this private dockerd ({self.bridge}) started; "
                f"dockerds started with --bridge none (which delete it): {bridge_none_dockerds() or 'none now'}"
            )

    def destroy(self) -> None:
        """Remove every container and network, stop the engine, delete its bridges and files."""
        try:
            if self.proc is None and not self.answers():
                self.start()
            ids = self.cli("ps", "-aq", check=False).split()
            if ids:
                self.cli("rm", "-f", *ids, check=False)
            for net in self.cli("network", "ls", "-q", "--no-trunc", "--filter", "type=custom", check=False).split():
                self.cli("network", "rm", net, check=False)
        finally:
            self.stop()
            # A stopped dockerd leaves its networks' bridges: they are in its namespace, and go with it.
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
            if self.block is not None:
                release_block(self.block)
            # dockerd leaves its data root mounted on itself after it stops.
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
            for mount in sorted((m for m in mounts if m.startswith(str(self.root))), reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
            shutil.rmtree(self.root, ignore_errors=True)
        self.assert_host_bridge_intact()
