"""The swarm backend's service body: the docker backend's sandbox in the service API's words (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfactory.backends.base import AgentSpec
from agentfactory.backends.swarm_spec import build_service, scratch_volume, service_name
from agentfactory.catalog import Catalog


def spec(**kw: object) -> AgentSpec:
    base: dict[str, object] = dict(
        agent_id="ag_x", key_id="key_1", image="img", env={"A": "1"}, memory_mb=512, cpus=1.5, pids=256,
        scratch_mb=64, max_log_bytes=1 << 20, gateway_socket_dir=Path("/run/af/gw"), instance="i1",
    )  # fmt: skip
    base.update(kw)
    return AgentSpec(**base)  # type: ignore[arg-type]


def test_one_task_never_restarted_with_the_sandbox_profile() -> None:
    body = build_service(spec(constraints=("node.labels.sandbox==true",)), stop_grace_seconds=3)
    task, container = body["TaskTemplate"], body["TaskTemplate"]["ContainerSpec"]
    assert body["Name"] == service_name("ag_x") and body["Mode"] == {"Replicated": {"Replicas": 1}}
    assert task["RestartPolicy"] == {"Condition": "none", "MaxAttempts": 0}
    assert body["Labels"] == container["Labels"]
    assert body["Labels"]["io.agentfactory.agent_id"] == "ag_x" and body["Labels"]["io.agentfactory.instance"] == "i1"
    assert container["CapabilityDrop"] == ["ALL"] and container["ReadOnly"] and container["Init"]
    assert container["User"] == "10001:10001" and container["Env"] == ["A=1"]
    assert container["StopGracePeriod"] == 3_000_000_000
    assert {u["Name"]: u["Soft"] for u in container["Ulimits"]} == {"core": 0, "nofile": 1024}
    assert task["Resources"]["Limits"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 512 << 20, "Pids": 256}
    assert task["Resources"]["Reservations"] == {"MemoryBytes": 512 << 20}  # SPEC §10: memory counts, CPU not
    assert task["Placement"] == {"Constraints": ["node.labels.sandbox==true"]}
    assert "Networks" not in task  # no network: the daemon-wide `bridge: none` leaves only lo
    mounts = {m["Target"]: m for m in container["Mounts"]}
    scratch = mounts["/scratch"]
    assert scratch["Source"] == scratch_volume("ag_x")
    assert "exec" in scratch["VolumeOptions"]["DriverConfig"]["Options"]["o"].split(",")
    assert "size=64m" in scratch["VolumeOptions"]["DriverConfig"]["Options"]["o"]
    assert mounts["/run/agentfactory"] == {
        "Type": "bind", "Source": "/run/af/gw", "Target": "/run/agentfactory", "ReadOnly": True
    }  # fmt: skip
    assert task["LogDriver"]["Options"]["max-size"] == str(2 * (1 << 20) + 10 * 1024 * 1024)


@pytest.mark.parametrize("network", ["host", "bridge", "none", "container:abc"])
def test_shared_namespaces_are_refused(network: str) -> None:
    with pytest.raises(ValueError, match="may not join"):
        build_service(spec(network=network), stop_grace_seconds=3)


def test_constraints_come_from_the_model_and_its_tools_once_each() -> None:
    catalog = Catalog.model_validate(
        {
            "version": 1,
            "models": [{"id": "m", "provider": "echo", "constraints": ["node.labels.gpu==true"]}],
            "tools": [
                {"id": "t", "constraints": ["node.labels.sandbox==true", "node.labels.gpu==true"]},
                {"id": "u"},
            ],
        }
    )
    assert catalog.constraints("m", ["t", "u"]) == ("node.labels.gpu==true", "node.labels.sandbox==true")
    assert catalog.constraints("m", []) == ("node.labels.gpu==true",)


def test_the_swarm_keeps_no_warm_sandboxes() -> None:
    """The docker backend's warm sandboxes are containers of one engine, not services Swarm places:
    on a swarm every agent starts cold (the server logs warm_pool_unsupported when a pool is asked for)."""
    from agentfactory.backends.swarm import SwarmBackend

    assert SwarmBackend(instance="t").sandboxes() is None
