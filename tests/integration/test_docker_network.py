"""The agents' bridge as the Docker backend makes it: no traffic between agents, the egress policy
installed in the host's real iptables and read back, an old bridge (made before the ICC rule)
replaced once nothing uses it and refused while something does."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator

import docker
import pytest

from agentfactory.backends import egress
from agentfactory.backends.docker import ICC_OPTION, DockerBackend, bridge_of
from agentfactory.errors import NetworkPolicyError

pytestmark = pytest.mark.docker
IMAGE = "agentfactory-runtime:latest"


@pytest.fixture
def api(docker_engine: None) -> Iterator[docker.APIClient]:
    client = docker.APIClient(version="auto")
    yield client
    client.close()


@pytest.fixture
def name(api: docker.APIClient) -> Iterator[str]:
    net = f"af-test-net-{secrets.token_hex(4)}"
    yield net
    egress.remove(net)
    for n in api.networks(names=[net]):
        for cid in api.inspect_network(n["Id"]).get("Containers") or {}:
            api.remove_container(cid, force=True)
        api.remove_network(n["Id"])


def network(api: docker.APIClient, name: str) -> dict[str, object]:
    (net,) = [n for n in api.networks(names=[name]) if n["Name"] == name]
    return net  # type: ignore[no-any-return]


def icc(api: docker.APIClient, name: str) -> str | None:
    return (network(api, name).get("Options") or {}).get(ICC_OPTION)  # type: ignore[union-attr]


def policy(api: docker.APIClient, name: str) -> list[egress.Chain]:
    return egress.build_policy(
        bridge_of(network(api, name)), host_networks=egress.host_networks(), ipv6=egress.kernel_has_ipv6()
    )


def iptables(*args: str, v6: bool = False) -> str:
    return subprocess.run(["ip6tables" if v6 else "iptables", "-w", *args], capture_output=True, text=True).stdout


def test_made_with_icc_off_and_the_egress_policy_read_back_in_force(api: docker.APIClient, name: str) -> None:
    backend = DockerBackend(instance="test", network_name=name)
    asyncio.run(backend.prepare_network(name))
    backend._egress_checked.clear()
    backend._ensure_network(api, name)  # idempotent: the same rules, once
    assert icc(api, name) == "false"
    chains = policy(api, name)
    assert egress.verify(chains) == []
    fwd, inp = egress.chain_names(name)
    assert f"-A DOCKER-USER -j {fwd}" in iptables("-S", "DOCKER-USER").splitlines()
    assert iptables("-S", "INPUT").count(f"-j {inp}") == 1
    assert iptables("-S", "FORWARD", v6=True).count(f"-j {fwd}") == 1
    forward = iptables("-S", fwd)
    interface = bridge_of(network(api, name)).interface
    assert "-d 169.254.0.0/16 -j REJECT" in forward and f"-o {interface} -j REJECT" in forward


def test_rules_flushed_or_jumped_over_are_restored_at_the_next_check(api: docker.APIClient, name: str) -> None:
    backend = DockerBackend(instance="test", network_name=name)
    backend._ensure_network(api, name)
    fwd, inp = egress.chain_names(name)
    operator_rule = ["DOCKER-USER", "-s", "203.0.113.7/32", "-j", "RETURN"]
    iptables("-F", fwd)
    iptables("-D", "INPUT", "-j", inp)
    iptables("-I", *operator_rule[:1], "1", *operator_rule[1:])
    try:
        assert len(egress.verify(policy(api, name))) == 3
        backend._ensure_network(api, name)  # verified a moment ago: not read again yet
        assert len(egress.verify(policy(api, name))) == 3
        net_id, _ = backend._egress_checked[name]
        backend._egress_checked[name] = (net_id, 0.0)  # as if the last check were old
        backend._ensure_network(api, name)
        assert egress.verify(policy(api, name)) == []
        assert iptables("-S", "DOCKER-USER").splitlines()[1] == f"-A DOCKER-USER -j {fwd}"
    finally:
        iptables("-D", *operator_rule)


def test_removed_policy_leaves_nothing(api: docker.APIClient, name: str) -> None:
    DockerBackend(instance="test", network_name=name)._ensure_network(api, name)
    egress.remove(name)
    egress.remove(name)  # idempotent
    for v6 in (False, True):
        assert not [
            line for line in iptables("-S", v6=v6).splitlines() if any(c in line for c in egress.chain_names(name))
        ]


def test_an_old_bridge_is_replaced_when_unused_and_refused_while_in_use(api: docker.APIClient, name: str) -> None:
    backend = DockerBackend(instance="test", network_name=name)
    api.create_network(name, driver="bridge")
    cid = api.create_container(IMAGE, entrypoint=["sleep", "30"], host_config=api.create_host_config(network_mode=name))
    api.start(cid)
    try:
        with pytest.raises(NetworkPolicyError, match=f"{name}.* lets agents reach each other") as refused:
            backend._ensure_network(api, name)
        assert refused.value.code == "E_CATALOG"
        assert icc(api, name) is None  # left as it is, and not used
    finally:
        api.remove_container(cid, force=True)
    backend._ensure_network(api, name)
    assert icc(api, name) == "false"
    assert egress.verify(policy(api, name)) == []
