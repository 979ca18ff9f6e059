"""A single-node Docker Swarm of the test's own: a private dockerd in a network namespace of its own.

The swarm backend requires two daemon-wide settings (docs/swarm.md): `no-new-privileges` and no
default bridge (`--bridge none`, so that a task without a network gets only `lo`). `--bridge none`
makes dockerd delete the interface named docker0 *in its network namespace*: this engine is a
`PrivateDockerd` (dockerd.py), in a namespace of its own where there is no docker0 to delete and its
iptables rules are its own; the machine's shared engine and its docker0 are never touched. It shares
the host's filesystem, so the control plane's gateway socket directory is bind-mounted as on one host.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess

from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV
from tests.support.dockerd import RUNTIME_IMAGE, PrivateDockerd

WIRES = ipaddress.IPv4Network("10.247.0.0/16")  # /30s of the wires between this host and a private swarm


class PrivateSwarm(PrivateDockerd):
    def __init__(self, *, no_new_privileges: bool = True, init_swarm: bool = True):
        super().__init__("afsw-")
        self.no_new_privileges = no_new_privileges
        self.init_swarm = init_swarm

    def start(self, image: str = RUNTIME_IMAGE) -> PrivateSwarm:
        flags = ["--no-new-privileges"] if self.no_new_privileges else []
        self.run_dockerd("--bridge", "none", *flags)
        if self.init_swarm:
            self.cli("swarm", "init", "--advertise-addr", "127.0.0.1")
        self.load_image(image)
        return self

    def wire(self) -> str:
        """A network between this host and the swarm's node, as between a manager and a worker: a veth
        pair, a /30 of 10.247.0.0/16 (its host side in the host's namespace, the other in the swarm's),
        and nothing else (no route beyond it, no forwarding). The host side's address, which the node
        reaches; it goes with `destroy` (deleting the namespace deletes the pair)."""
        if getattr(self, "wire_host", None):
            return str(self.wire_host)
        used = {a["local"] for i in json.loads(_ip("-j", "addr")) for a in i.get("addr_info", [])}
        while True:
            net = list(WIRES.subnets(new_prefix=30))[secrets.randbelow(2**14)]
            host, node = (str(a) for a in net.hosts())
            if host not in used and node not in used:
                break
        self.veth = f"afr{self.suffix}h"
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", f"afr{self.suffix}n", "netns", self.netns)
        _ip("addr", "add", f"{host}/30", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        _ip("-n", self.netns, "addr", "add", f"{node}/30", "dev", f"afr{self.suffix}n")
        _ip("-n", self.netns, "link", "set", f"afr{self.suffix}n", "up")
        self.wire_host = host
        return host

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
            self.stop()
        finally:
            if getattr(self, "veth", None):
                subprocess.run(["ip", "link", "del", self.veth], capture_output=True, check=False)
            self.remove_namespace_and_files()


def swarm_env(swarm: PrivateSwarm, **extra: str) -> dict[str, str]:
    """The environment of a control plane under test that runs its agents on `swarm`."""
    return {
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
        "DOCKER_HOST": swarm.host,
        "AGENTFACTORY_BACKEND": "swarm",
        "AGENTFACTORY_SWARM_PLACEMENT_SECONDS": "3",
        **extra,
    }


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30).stdout
