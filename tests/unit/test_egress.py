"""The egress policy's pure builder: a bridge becomes exactly these iptables chains (SPEC §14)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agentfactory.backends.egress import (
    DENIED_IPV4,
    Bridge,
    Chain,
    build_policy,
    chain_names,
    check_resolvers,
    host_networks,
    is_public_ipv4,
    run_command,
)
from agentfactory.errors import NetworkPolicyError
from agentfactory.settings import Settings

ENTRY = Path(__file__).resolve().parents[2] / "runtime_image" / "runtime_entry.py"
BRIDGE = Bridge(network="agentfactory-agents", interface="br-0123456789ab", subnets=("172.18.0.0/16",))
FWD, IN = "AF-EGRESS-FWD-881d5ed0", "AF-EGRESS-IN-881d5ed0"
REJECT = "-j REJECT --reject-with icmp-admin-prohibited"
REJECT6 = "-j REJECT --reject-with icmp6-adm-prohibited"


def test_chain_names_are_stable_short_and_per_network() -> None:
    assert chain_names("agentfactory-agents") == (FWD, IN)
    assert chain_names("other") != (FWD, IN)
    assert all(len(n) <= 28 for n in chain_names("x" * 200))  # iptables' limit


def test_a_bridge_becomes_exactly_these_chains() -> None:
    # The host's own links: its LAN (public-numbered here), docker0 (already private), a device
    # default route (a VPN's "everything": not a link, skipped), a link inside another (covered), the
    # agents' subnet itself (covered by 172.16.0.0/12).
    host = ["192.0.2.0/24", "172.17.0.0/16", "0.0.0.0/0", "203.0.113.0/24", "203.0.113.0/28"]
    assert build_policy(BRIDGE, host_networks=host) == [
        Chain(
            4,
            FWD,
            "DOCKER-USER",
            (
                f"-A {FWD} ! -i br-0123456789ab -j RETURN",
                f"-A {FWD} -d 0.0.0.0/8 {REJECT}",
                f"-A {FWD} -d 10.0.0.0/8 {REJECT}",
                f"-A {FWD} -d 100.64.0.0/10 {REJECT}",
                f"-A {FWD} -d 127.0.0.0/8 {REJECT}",
                f"-A {FWD} -d 169.254.0.0/16 {REJECT}",
                f"-A {FWD} -d 172.16.0.0/12 {REJECT}",
                f"-A {FWD} -d 192.0.0.0/24 {REJECT}",
                f"-A {FWD} -d 192.168.0.0/16 {REJECT}",
                f"-A {FWD} -d 198.18.0.0/15 {REJECT}",
                f"-A {FWD} -d 224.0.0.0/4 {REJECT}",
                f"-A {FWD} -d 240.0.0.0/4 {REJECT}",
                f"-A {FWD} -d 192.0.2.0/24 {REJECT}",
                f"-A {FWD} -d 203.0.113.0/24 {REJECT}",
                f"-A {FWD} -o br-0123456789ab {REJECT}",
            ),
        ),
        Chain(
            4,
            IN,
            "INPUT",
            (
                f"-A {IN} ! -i br-0123456789ab -j RETURN",
                f"-A {IN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                f"-A {IN} {REJECT}",
            ),
        ),
        Chain(6, FWD, "FORWARD", (f"-A {FWD} -i br-0123456789ab {REJECT6}",)),
        Chain(6, IN, "INPUT", (f"-A {IN} -i br-0123456789ab {REJECT6}",)),
    ]


def test_a_kernel_without_ipv6_gets_no_ip6tables_chains() -> None:
    assert [c.family for c in build_policy(BRIDGE, ipv6=False)] == [4, 4]


def test_an_agents_subnet_outside_the_private_ranges_is_denied_by_name() -> None:
    bridge = Bridge(network="n", interface="br-x", subnets=("203.0.113.0/24",))
    forward = build_policy(bridge)[0].rules
    fwd = chain_names("n")[0]
    assert forward[-2:] == (f"-A {fwd} -d 203.0.113.0/24 {REJECT}", f"-A {fwd} -o br-x {REJECT}")


def test_restore_input_declares_each_chain_then_its_rules() -> None:
    chain = build_policy(BRIDGE)[1]
    assert chain.restore_lines() == [f":{IN} - [0:0]", *chain.rules]


def test_the_runtime_refuses_the_same_ranges_as_the_packet_filter() -> None:
    spec = importlib.util.spec_from_file_location("runtime_entry_for_egress", ENTRY)
    assert spec is not None and spec.loader is not None
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    assert runtime.DENIED_IPV4 == DENIED_IPV4
    for address in ("169.254.169.254", "10.250.0.1", "198.51.100.10", "8.8.8.8", "100.64.0.1", "255.255.255.255"):
        assert runtime.is_public_address(address) == is_public_ipv4(address), address
    assert not runtime.is_public_address("::ffff:169.254.169.254")
    assert not runtime.is_public_address("64:ff9b::a9fe:a9fe")  # NAT64 of the metadata address
    assert not runtime.is_public_address("fe80::1%eth0")
    assert runtime.is_public_address("2606:4700::1111")


def test_host_networks_are_the_links_of_the_main_table(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default via 192.0.2.1
        "wg0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"  # default dev wg0
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"  # 172.17.0.0/16
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 192.0.2.0/24
        "eth0\t007100CB\t020200C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 203.0.113.0/24 via a router
    )
    assert host_networks(route) == ["172.17.0.0/16", "192.0.2.0/24"]
    assert host_networks(tmp_path / "absent") == []


def test_a_missing_iptables_is_named() -> None:
    with pytest.raises(NetworkPolicyError, match="iptables-not-here is not installed"):
        run_command(["iptables-not-here", "-S"])


def test_agents_resolvers_must_be_public() -> None:
    check_resolvers(["9.9.9.9", "1.1.1.1"])
    check_resolvers([])
    for bad in ("10.255.255.53", "127.0.0.53", "169.254.169.253"):
        with pytest.raises(ValueError, match=f"AGENTFACTORY_AGENT_DNS: {bad} is not a public address"):
            check_resolvers(["8.8.8.8", bad])
    assert Settings(agent_dns=["9.9.9.9"]).agent_dns == ["9.9.9.9"]
    with pytest.raises(ValueError, match=r"'resolver\.local' is not an IPv4 address"):
        Settings(agent_dns=["resolver.local"])
