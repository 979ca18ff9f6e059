"""A Docker Engine of the test's own: its own socket, data root, exec root, pid file and trust key
(so its own engine ID), its own network namespace with its own bridge and address pool, no iptables
rules. Tests that stop and restart an engine use one of these, never the machine's shared engine
that other tests run on.

The dockerd is a `PrivateDockerd` (dockerd.py, as swarm_engine.py's): in a network namespace of its
own, so whatever it does to interfaces stays there and the machine's shared engine's bridge is never
within its reach. Its agents reach the control plane's gateway by its Unix socket (the filesystem is
shared), which crosses namespaces. Its bridge (`afb-…`) and address block are still its own, made in
its namespace, and everything it made there goes with the namespace."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.dockerd import PrivateDockerd

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


class PrivateEngine(PrivateDockerd):
    def __init__(self, root: Path | None = None):
        super().__init__("afe-", root)  # its network namespace is made at the first start
        self.live_restore = False
        self.host_bridge_existed = HOST_BRIDGE.exists()
        # Interface names are at most 15 bytes: "afb-" and mkdtemp's 8 characters.
        self.bridge = "afb-" + self.suffix
        self.block: ipaddress.IPv4Network | None = None

    def _make_bridge(self) -> None:
        self.make_netns()
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
        config = {"live-restore": live_restore, "default-address-pools": [{"base": str(pool), "size": 24}]}
        flags = ["--bridge", self.bridge, "--iptables=false", "--ip-masq=false", "--ip-forward=false"]
        self.run_dockerd(*flags, config=config, timeout=timeout)
        self.assert_host_bridge_intact()
        return time.time()

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
            self.remove_namespace_and_files()
            if self.block is not None:
                release_block(self.block)
        self.assert_host_bridge_intact()
