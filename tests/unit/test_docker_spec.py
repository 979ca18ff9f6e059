"""The pure builder: an AgentSpec becomes exactly these Docker create arguments."""

from pathlib import Path

import pytest

from agentfactory.backends.base import AgentSpec
from agentfactory.backends.docker_spec import build_create_args


def spec(**kw: object) -> AgentSpec:
    base: dict[str, object] = dict(
        agent_id="ag_1",
        key_id="key_a",
        image="agentfactory-runtime:latest",
        env={"FOO": "bar"},
        memory_mb=512,
        cpus=1.0,
        pids=256,
        scratch_mb=256,
        max_log_bytes=1024 * 1024,
        gateway_socket_dir=Path("/run/agentfactory/gateway"),
        instance="local",
    )
    base.update(kw)
    return AgentSpec(**base)  # type: ignore[arg-type]


def test_no_network_agent_gets_the_full_hardening_profile() -> None:
    assert build_create_args(spec()) == {
        "image": "agentfactory-runtime:latest",
        "name": "agentfactory-ag_1",
        "user": "10001:10001",
        "environment": {"FOO": "bar"},
        "labels": {
            "io.agentfactory.managed": "true",
            "io.agentfactory.agent_id": "ag_1",
            "io.agentfactory.key_id": "key_a",
            "io.agentfactory.instance": "local",
        },
        "working_dir": "/scratch",
        "network_disabled": True,
        "stdin_open": False,
        "tty": False,
        "detach": True,
        "host_config": {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "privileged": False,
            "read_only": True,
            "tmpfs": {
                "/scratch": "rw,exec,nosuid,nodev,uid=10001,gid=10001,mode=0700,size=256m",
                "/tmp": "rw,noexec,nosuid,nodev,uid=10001,gid=10001,mode=0700,size=64m",
            },
            "mem_limit": 512 * 1024 * 1024,
            "memswap_limit": 512 * 1024 * 1024,
            "nano_cpus": 1_000_000_000,
            "pids_limit": 256,
            "init": True,
            "network_mode": "none",
            "ipc_mode": "private",
            "cgroupns": "private",
            "log_config": {
                "type": "json-file",
                "config": {"max-size": str(2 * 1024 * 1024 + 10 * 1024 * 1024), "max-file": "1"},
            },
            "ulimits": [
                {"Name": "core", "Soft": 0, "Hard": 0},
                {"Name": "nofile", "Soft": 1024, "Hard": 1024},
            ],
            "binds": {"/run/agentfactory/gateway": {"bind": "/run/agentfactory", "mode": "ro"}},
        },
    }


def test_network_tool_joins_the_isolated_network_never_the_host() -> None:
    plain = build_create_args(spec())
    args = build_create_args(spec(network="agentfactory-agents"))
    assert args["network_disabled"] is False
    assert args["host_config"].pop("network_mode") == "agentfactory-agents"
    # Only the network differs: the rest of the profile is the same.
    assert plain["host_config"].pop("network_mode") == "none"
    assert {**args, "network_disabled": True} == plain


@pytest.mark.parametrize("network", ["host", "bridge", "default", "none", "container:abc"])
def test_agents_never_share_the_host_default_bridge_or_another_container(network: str) -> None:
    with pytest.raises(ValueError, match="isolated"):
        build_create_args(spec(network=network))


def test_no_seccomp_or_apparmor_opt_out_and_nothing_privileged() -> None:
    hc = build_create_args(spec(network="agentfactory-agents", runtime="runsc"))["host_config"]
    assert hc["security_opt"] == ["no-new-privileges:true"]
    assert not {"cap_add", "devices", "pid_mode", "userns_mode", "volumes_from", "port_bindings"} & hc.keys()
    assert list(hc["binds"]) == ["/run/agentfactory/gateway"]


def test_labels_point_back_to_the_agent() -> None:
    labels = build_create_args(spec())["labels"]
    assert labels["io.agentfactory.agent_id"] == "ag_1"
    assert labels["io.agentfactory.managed"] == "true"


def test_runsc_raises_the_pids_limit_for_its_own_threads() -> None:
    hc = build_create_args(spec(runtime="runsc", pids=64))["host_config"]
    assert hc["runtime"] == "runsc"
    assert hc["pids_limit"] == 512
    assert build_create_args(spec(runtime="runsc", pids=2048))["host_config"]["pids_limit"] == 2048
    assert build_create_args(spec(pids=64))["host_config"]["pids_limit"] == 64


def test_runsc_network_agents_use_the_runtime_registered_with_a_netstack() -> None:
    assert build_create_args(spec(runtime="runsc"))["host_config"]["runtime"] == "runsc"
    hc = build_create_args(spec(runtime="runsc", network="agentfactory-agents"))["host_config"]
    assert hc["runtime"] == "runsc-net"
    assert hc["network_mode"] == "agentfactory-agents"
    other = build_create_args(spec(runtime="kata", network="agentfactory-agents"))["host_config"]
    assert other["runtime"] == "kata"


def test_public_resolvers_are_given_to_network_agents_only() -> None:
    resolvers = ("8.8.8.8", "1.1.1.1")
    assert build_create_args(spec(network="agentfactory-agents", dns=resolvers))["host_config"]["dns"] == list(
        resolvers
    )
    assert "dns" not in build_create_args(spec(dns=resolvers))["host_config"]
