"""A single-node Docker Swarm of the test's own: a private dockerd in a network namespace of its own.

The swarm backend requires two daemon-wide settings (docs/swarm.md): `no-new-privileges` and no
default bridge (`--bridge none`, so that a task without a network gets only `lo`). `--bridge none`
makes dockerd delete the interface named docker0 *in its network namespace*: this engine is a
`PrivateDockerd` (dockerd.py), in a namespace of its own where there is no docker0 to delete and its
iptables rules are its own; the machine's shared engine and its docker0 are never touched. It shares
the host's filesystem, so the control plane's gateway socket directory is bind-mounted as on one host.
"""

from __future__ import annotations

from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV
from tests.support.dockerd import RUNTIME_IMAGE, PrivateDockerd


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
