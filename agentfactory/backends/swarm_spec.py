"""Pure builder: an `AgentSpec` becomes the body of Swarm's service create (API 1.41). No I/O here.

The same hardening profile as `docker_spec` (SPEC §4), spelled in the service API's words. Where the
1.41 service API has no setting, the daemon-wide equivalent is required and checked at start-up by
`SwarmBackend.verify` (docs/swarm.md):
- no-new-privileges: no per-service option; `"no-new-privileges": true` in every node's daemon.json.
- no network: a service cannot join the `none` network ("network none not found") and one with no
  network joins the default bridge; with `"bridge": "none"` in daemon.json the engine gives such a
  task no network at all (only `lo`).
- the scratch dir: a tmpfs mount of the service API is always `noexec` and root-owned, so scratch is a
  per-agent named volume of the local driver with `type=tmpfs` and the docker backend's options
  (exec, the agent's uid, sized); its contents go when the task's container stops.
- OCI runtime, ipc/cgroup namespace modes, memory+swap: not settable per service (private IPC and
  cgroup namespaces are the engine's defaults; swap is off on the nodes we document).
"""

from __future__ import annotations

from typing import Any

from agentfactory.backends.base import LABEL_AGENT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_PREFIX, AgentSpec
from agentfactory.backends.docker_spec import AGENT_UID, FORBIDDEN_NETWORKS, GATEWAY_MOUNT, SCRATCH

NANO = 1_000_000_000
LABEL_RELAY = LABEL_PREFIX + "relay"
# A task's reservation is what Swarm's scheduler counts to place and spread agents over nodes. As in
# SPEC §10's capacity (a node's memory divided by memory_mb), memory is reserved whole and CPU not at
# all: agents mostly wait on their model. (A CPU reservation of a quarter of `cpus` capped a 2-core node
# at 8 agents: "no suitable node (insufficient resources on 1 node)".)


def service_name(agent_id: str) -> str:
    return f"agentfactory-{agent_id}"


def scratch_volume(agent_id: str) -> str:
    return f"agentfactory-scratch-{agent_id}"


def relay_name(instance: str) -> str:
    """The node relay's service name (swarm_relay.py), and its node-local volume's."""
    return f"agentfactory-relay-{instance}"


def relay_volume(instance: str) -> str:
    return relay_name(instance)


def relay_mount(instance: str) -> dict[str, Any]:
    """An agent's read-only mount of its node's relay volume where it expects the gateway's socket:
    created empty on a node where it is not yet (no copy of the image's files into it)."""
    return {
        "Type": "volume",
        "Source": relay_volume(instance),
        "Target": GATEWAY_MOUNT,
        "ReadOnly": True,
        "VolumeOptions": {"NoCopy": True, "Labels": {LABEL_RELAY: "true", LABEL_INSTANCE: instance}},
    }


def build_service(spec: AgentSpec, *, stop_grace_seconds: float, relay: str | None = None) -> dict[str, Any]:
    """The JSON body of `POST /services/create`: one task (replicated, 1 replica) that is never
    restarted, labelled like the docker backend's containers (service and container both). With
    `relay` (the instance whose node relay runs), the gateway is its node's relay volume."""
    if spec.network is not None and (spec.network in FORBIDDEN_NETWORKS or spec.network.startswith("container:")):
        raise ValueError(f"agents may not join network {spec.network!r}: use an isolated swarm-scoped bridge")
    labels = {
        LABEL_MANAGED: "true",
        LABEL_AGENT: spec.agent_id,
        LABEL_PREFIX + "key_id": spec.key_id,
        LABEL_INSTANCE: spec.instance,
    }
    mounts: list[dict[str, Any]] = [
        {
            "Type": "volume",
            "Source": scratch_volume(spec.agent_id),
            "Target": SCRATCH,
            "VolumeOptions": {
                "Labels": labels,
                "DriverConfig": {
                    "Name": "local",
                    "Options": {
                        "type": "tmpfs",
                        "device": "tmpfs",
                        "o": f"size={spec.scratch_mb}m,uid={AGENT_UID},gid={AGENT_UID},mode=0700,exec,nosuid,nodev",
                    },
                },
            },
        },
        # The service API's tmpfs is noexec,nosuid,nodev and world-writable (sticky): what /tmp should be.
        {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 64 * 1024 * 1024}},
    ]
    if spec.gateway_socket_dir is not None and relay is not None:
        mounts.append(relay_mount(relay))
    elif spec.gateway_socket_dir is not None:
        # The same host path on every node: the gateway's socket there (docs/swarm.md, the node relay).
        gateway = {"Type": "bind", "Source": str(spec.gateway_socket_dir), "Target": GATEWAY_MOUNT, "ReadOnly": True}
        mounts.append(gateway)
    memory = spec.memory_mb * 1024 * 1024
    container: dict[str, Any] = {
        "Image": spec.image,
        "Labels": labels,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Dir": SCRATCH,
        "User": f"{AGENT_UID}:{AGENT_UID}",
        "ReadOnly": True,
        "Init": True,
        "CapabilityDrop": ["ALL"],
        "Mounts": mounts,
        "StopGracePeriod": int(max(0.0, stop_grace_seconds) * NANO),
        "Ulimits": [
            {"Name": "core", "Soft": 0, "Hard": 0},
            {"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile},
        ],
    }
    if spec.network is not None and spec.dns:
        container["DNSConfig"] = {"Nameservers": list(spec.dns)}
    task: dict[str, Any] = {
        "ContainerSpec": container,
        "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
        "Resources": {
            "Limits": {"NanoCPUs": int(spec.cpus * NANO), "MemoryBytes": memory, "Pids": spec.pids},
            "Reservations": {"MemoryBytes": memory},
        },
        "LogDriver": {
            "Name": "json-file",
            # The engine's copy is what capture reads (from the task's first line): never rotated
            # within max_log_bytes.
            "Options": {"max-size": str(2 * spec.max_log_bytes + 10 * 1024 * 1024), "max-file": "1"},
        },
        "Placement": {"Constraints": list(spec.constraints)},
    }
    if spec.network is not None:
        task["Networks"] = [{"Target": spec.network}]
    return {
        "Name": service_name(spec.agent_id),
        "Labels": labels,
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": 1}},
    }
