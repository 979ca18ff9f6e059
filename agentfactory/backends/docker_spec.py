"""Pure builder: an `AgentSpec` becomes the arguments of Docker's container create. No I/O here."""

from __future__ import annotations

from typing import Any

from agentfactory.backends.base import LABEL_AGENT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_PREFIX, LABEL_WARM, AgentSpec

AGENT_UID = 10001
SCRATCH = "/scratch"
GATEWAY_MOUNT = "/run/agentfactory"
RUNSC_MIN_PIDS = 512  # gVisor's sentry counts its own threads against the PIDs limit
# scripts/setup.sh registers gVisor twice: "runsc" with `--network=none` (no network stack at all in
# the sandbox) for no-network agents, "runsc-net" with gVisor's own netstack for network-tool agents.
RUNSC_NETWORK_RUNTIMES = {"runsc": "runsc-net"}
# Network modes that would share a network namespace with the host or another container.
FORBIDDEN_NETWORKS = ("host", "bridge", "default", "none")


def container_name(agent_id: str) -> str:
    return f"agentfactory-{agent_id}"


def build_create_args(spec: AgentSpec) -> dict[str, Any]:
    """Keyword arguments for docker-py's `APIClient.create_container`, with `host_config` as the
    keyword arguments of `APIClient.create_host_config`.

    The hardening profile (CIS Docker Benchmark §5) lives here, in one place: every capability
    dropped, no-new-privileges, a non-root user, a read-only root with sized tmpfs scratch, memory
    equal to memory+swap, CPU and PIDs limits, an init process, no network unless asked for, and
    no host path mounted but the model gateway's socket directory. Docker's default seccomp profile
    applies (nothing here turns it off). A network, when asked for, is a user-defined bridge: never
    the host's namespace, the default bridge or another container's; its DNS is `spec.dns` (public
    resolvers: the egress policy blocks the host's own).
    """
    if spec.network is not None and (spec.network in FORBIDDEN_NETWORKS or spec.network.startswith("container:")):
        raise ValueError(f"agents may not join network {spec.network!r}: use an isolated user-defined bridge")
    labels = {
        LABEL_MANAGED: "true",
        LABEL_AGENT: spec.agent_id,
        LABEL_PREFIX + "key_id": spec.key_id,
        LABEL_INSTANCE: spec.instance,
    }
    if spec.warm_owner is not None:  # a warm sandbox names no agent: it has none yet (SPEC §10)
        labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: spec.instance, LABEL_WARM: spec.warm_owner}
    # Docker adds noexec to every tmpfs unless told `exec`: scratch is where agents build and run programs.
    scratch_opts = f"rw,exec,nosuid,nodev,uid={AGENT_UID},gid={AGENT_UID},mode=0700,size={spec.scratch_mb}m"
    tmp_opts = f"rw,noexec,nosuid,nodev,uid={AGENT_UID},gid={AGENT_UID},mode=0700,size=64m"
    runsc = spec.runtime is not None and spec.runtime.startswith("runsc")
    pids = max(spec.pids, RUNSC_MIN_PIDS) if runsc else spec.pids
    host_config: dict[str, Any] = {
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "read_only": True,
        "tmpfs": {SCRATCH: scratch_opts, "/tmp": tmp_opts},
        "mem_limit": spec.memory_mb * 1024 * 1024,
        "memswap_limit": spec.memory_mb * 1024 * 1024,
        "nano_cpus": int(spec.cpus * 1_000_000_000),
        "pids_limit": pids,
        "init": True,
        "network_mode": spec.network or "none",
        "ipc_mode": "private",
        "cgroupns": "private",
        "log_config": {
            "type": "json-file",
            # Docker's own copy is what restart recovery replays; bounded so it never grows without end.
            "config": {"max-size": str(2 * spec.max_log_bytes + 10 * 1024 * 1024), "max-file": "1"},
        },
        "ulimits": [
            {"Name": "core", "Soft": 0, "Hard": 0},
            # Each socket is a file: this bounds the connections an agent can open (to the gateway too).
            {"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile},
        ],
    }
    if spec.gateway_socket_dir is not None:
        host_config["binds"] = {str(spec.gateway_socket_dir): {"bind": GATEWAY_MOUNT, "mode": "ro"}}
    if spec.network is not None and spec.dns:
        host_config["dns"] = list(spec.dns)
    if spec.runtime:
        runtime = RUNSC_NETWORK_RUNTIMES.get(spec.runtime, spec.runtime) if spec.network else spec.runtime
        host_config["runtime"] = runtime
    return {
        "image": spec.image,
        "name": container_name(spec.agent_id),
        "user": f"{AGENT_UID}:{AGENT_UID}",
        "environment": dict(spec.env),
        "labels": labels,
        "working_dir": SCRATCH,
        "network_disabled": spec.network is None,
        # A warm sandbox's assignment comes on its stdin, written through the attach stream at claim
        # time: never in its config. docker-py makes it StdinOnce (not detached): closed when that
        # stream ends (the control plane went away), so an unclaimed sandbox then exits.
        "stdin_open": spec.warm_owner is not None,
        "tty": False,
        "detach": True,
        "host_config": host_config,
    }
