"""The egress policy of agents with a network (SPEC §14): the public internet, nothing else.

Enforced by the host's packet filter, not by the runtime's goodwill: whatever code runs in an agent
(browser_server, python, shell, under runc or gVisor, whose netstack also leaves through the bridge's
veth), its packets cross the agents' bridge and meet these rules.

- IPv4 forwarded from the bridge (Docker's `DOCKER-USER`, which Docker keeps first in `FORWARD`):
  rejected towards the loopback, private (RFC 1918), shared (CGNAT, RFC 6598), link-local (cloud
  metadata at 169.254.169.254), multicast and reserved ranges, towards the networks the host reaches
  directly (its own links: a LAN numbered in public space, the hypervisor's gateway), towards the
  agents' own subnet and to any port of the same bridge (another agent). Checked on every packet,
  whatever its conntrack state: no legitimate reply goes from an agent to such an address. DNAT
  (a port Docker publishes on the host) happens before, so such a packet is judged by where it goes.
- IPv4 from the bridge to the host itself (`INPUT`: any of its addresses, the bridge's gateway, a
  Docker API on TCP 2375/2376, the host's resolver): rejected, but replies to connections the host
  opened (conntrack ESTABLISHED,RELATED) pass.
- IPv6 from the bridge: rejected both ways (the agents' network has no IPv6; Docker also turns it
  off inside containers, the bridge keeps a link-local address of its own).

The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are not in the list: they are
routed nowhere on the internet, so a packet to them reaches nothing, unless a site numbers its own
network with them, which the host's-own-links rule covers (this also makes 198.51.100.10 usable as
the "public" host of the acceptance test, served inside the test's own network namespace).

DNS: Docker's embedded resolver (127.0.0.11, inside the agent's own namespace) forwards from that
namespace, so its queries meet the same rules: the host's resolver is a host or private address and
stays blocked, and agents are given public resolvers instead (`Settings.agent_dns`).

`build_policy` is pure (tested by list equality); `apply`, `verify` and `remove` are the thin I/O
over `iptables-restore`/`iptables -S`; every write goes through `iptables-restore --noflush`, one
atomic transaction per family, so a chain is never seen half built.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentfactory.errors import NetworkPolicyError

# Not the public internet. Keep in step with runtime_image/runtime_entry.py (a unit test compares them).
DENIED_IPV4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254)
    "172.16.0.0/12",  # RFC 1918 (Docker's default pools)
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast 255.255.255.255
)
REJECT_V4 = "-j REJECT --reject-with icmp-admin-prohibited"  # the agent's connect() fails at once
REJECT_V6 = "-j REJECT --reject-with icmp6-adm-prohibited"
CHAIN_PREFIX = "AF-EGRESS-"
DOCKER_USER = "DOCKER-USER"
Runner = Callable[[Sequence[str], str | None], str]


@dataclass(frozen=True)
class Bridge:
    """The agents' network as the host sees it."""

    network: str  # Docker's network name
    interface: str  # the host's bridge device, br-<12 hex of the network id>
    subnets: tuple[str, ...]  # its IPv4 subnets


@dataclass(frozen=True)
class Chain:
    """One chain of ours, its rules as `iptables -S` prints them, and the chain that jumps to it first."""

    family: int  # 4: iptables, 6: ip6tables
    name: str
    hook: str
    rules: tuple[str, ...]

    def restore_lines(self) -> list[str]:
        return [f":{self.name} - [0:0]", *self.rules]  # with --noflush, declaring a chain empties it


def is_public_ipv4(address: str) -> bool:
    """Whether the policy lets agents reach `address` (an IPv4 address), host links aside."""
    ip = ipaddress.IPv4Address(address)
    return not any(ip in ipaddress.IPv4Network(n) for n in DENIED_IPV4)


def check_resolvers(addresses: Sequence[str]) -> None:
    """ValueError unless every resolver given to agents is one they may reach (the server then
    refuses to start: an agent's DNS through the host's or a private resolver would be blocked)."""
    private = [a for a in addresses if not is_public_ipv4(a)]
    if private:
        raise ValueError(
            f"AGENTFACTORY_AGENT_DNS: {', '.join(private)} is not a public address, which agents with a network "
            "may not reach; give public resolvers"
        )


def chain_names(network: str) -> tuple[str, str]:
    """(forward, input) chain names of a network: short (iptables allows 28 characters) and stable."""
    digest = hashlib.sha256(network.encode()).hexdigest()[:8]
    return f"{CHAIN_PREFIX}FWD-{digest}", f"{CHAIN_PREFIX}IN-{digest}"


def _covered(net: ipaddress.IPv4Network, by: Iterable[ipaddress.IPv4Network]) -> bool:
    return any(net.subnet_of(other) for other in by)


def build_policy(bridge: Bridge, *, host_networks: Sequence[str] = (), ipv6: bool = True) -> list[Chain]:
    """The chains that hold `bridge`'s agents to the public internet.

    `host_networks`: IPv4 networks the host reaches directly (its links, device routes); those not
    already in DENIED_IPV4 are denied too, after the agents' own subnets. `ipv6`: whether the kernel
    has IPv6 at all (without it there is no IPv6 to filter, and no ip6tables table to write).
    """
    fwd, inp = chain_names(bridge.network)
    br = bridge.interface
    static = [ipaddress.IPv4Network(n) for n in DENIED_IPV4]
    extra: list[ipaddress.IPv4Network] = []
    for raw in (*bridge.subnets, *host_networks):
        net = ipaddress.IPv4Network(raw, strict=False)
        if net.prefixlen and not _covered(net, static) and not _covered(net, extra):
            extra.append(net)
    forward = (
        f"-A {fwd} ! -i {br} -j RETURN",
        *(f"-A {fwd} -d {net} {REJECT_V4}" for net in (*static, *extra)),
        f"-A {fwd} -o {br} {REJECT_V4}",
    )
    into_host = (
        f"-A {inp} ! -i {br} -j RETURN",
        f"-A {inp} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {inp} {REJECT_V4}",
    )
    chains = [Chain(4, fwd, DOCKER_USER, forward), Chain(4, inp, "INPUT", into_host)]
    if ipv6:
        chains += [
            Chain(6, fwd, "FORWARD", (f"-A {fwd} -i {br} {REJECT_V6}",)),
            Chain(6, inp, "INPUT", (f"-A {inp} -i {br} {REJECT_V6}",)),
        ]
    return chains


# -- the host --------------------------------------------------------------------------------------


def host_networks(route_table: Path = Path("/proc/net/route")) -> list[str]:
    """IPv4 networks of the host's main routing table reached without a gateway (its own links)."""
    found: list[str] = []
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or int(fields[3], 16) & 0x2:  # RTF_GATEWAY: reached through a router
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        if net.prefixlen:  # a device default route is "everything", not a link
            found.append(str(net))
    return sorted(set(found))


def kernel_has_ipv6() -> bool:
    return Path("/proc/net/if_inet6").exists()


def bridge_on_this_host(interface: str) -> bool:
    return Path("/sys/class/net", interface).exists()


def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run an iptables command; NetworkPolicyError says what is missing or refused."""
    if shutil.which(argv[0]) is None:
        raise NetworkPolicyError(f"{argv[0]} is not installed where the control plane runs")
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkPolicyError(f"{' '.join(argv[:2])} failed: {exc}") from exc
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise NetworkPolicyError(f"{' '.join(argv[:3])} failed (exit {done.returncode}): {why[-1] if why else ''}")
    return done.stdout


def _binary(family: int, restore: bool = False) -> str:
    return ("iptables" if family == 4 else "ip6tables") + ("-restore" if restore else "")


def _tables(run: Runner, family: int) -> dict[str, list[str]]:
    """The filter table as `iptables -S` prints it: every chain's `-A` lines, by chain name."""
    chains: dict[str, list[str]] = {}
    for line in run([_binary(family), "-w", "-S"], None).splitlines():
        kind, _, rest = line.partition(" ")
        name = rest.split(" ", 1)[0]
        if kind in ("-P", "-N"):
            chains.setdefault(name, [])
        elif kind == "-A":
            chains.setdefault(name, []).append(line)
    return chains


def _hook_problem(chain: Chain, hook_rules: list[str] | None) -> str | None:
    """Why `chain`'s jump is not in force: missing, or after a rule that is not one of our jumps."""
    if hook_rules is None:
        if chain.hook == DOCKER_USER:
            return "Docker's DOCKER-USER chain is missing (is dockerd running with iptables=false?)"
        return f"the {chain.hook} chain is missing"
    jump = f"-A {chain.hook} -j {chain.name}"
    for rule in hook_rules:
        if rule == jump:
            return None
        if not rule.startswith(f"-A {chain.hook} -j {CHAIN_PREFIX}"):
            return f"{chain.name} is not jumped to before {rule!r} in {chain.hook}"
    return f"{chain.hook} does not jump to {chain.name}"


def verify(chains: Sequence[Chain], run: Runner = run_command) -> list[str]:
    """Read the rules back; the list of what differs from `chains` (empty: in force)."""
    problems: list[str] = []
    tables = {family: _tables(run, family) for family in sorted({c.family for c in chains})}
    for chain in chains:
        table = tables[chain.family]
        if table.get(chain.name) != list(chain.rules):
            problems.append(f"{_binary(chain.family)}: {chain.name} does not hold the expected rules")
        hook = _hook_problem(chain, table.get(chain.hook))
        if hook:
            problems.append(f"{_binary(chain.family)}: {hook}")
    return problems


def apply(chains: Sequence[Chain], run: Runner = run_command) -> None:
    """Install `chains` (atomically per family, replacing their old content), then make sure each
    is jumped to first from its hook. Idempotent."""
    for family in sorted({c.family for c in chains}):
        ours = [c for c in chains if c.family == family]
        hooks = _tables(run, family)
        for chain in ours:  # checked before anything is written
            if chain.hook not in hooks:
                raise NetworkPolicyError(f"{_binary(family)}: {_hook_problem(chain, None)}")
        text = "\n".join(["*filter", *(line for c in ours for line in c.restore_lines()), "COMMIT", ""])
        run([_binary(family, restore=True), "-w", "--noflush"], text)
        for chain in ours:
            if _hook_problem(chain, hooks[chain.hook]) is None:
                continue
            jump = ["-j", chain.name]
            if f"-A {chain.hook} -j {chain.name}" in hooks[chain.hook]:  # behind another rule: move it up
                run([_binary(family), "-w", "-D", chain.hook, *jump], None)
            run([_binary(family), "-w", "-I", chain.hook, "1", *jump], None)


def enforce(chains: Sequence[Chain], run: Runner = run_command) -> None:
    """Verify; when the rules are not (all) in force, install them and verify again. Raises
    NetworkPolicyError naming what is still wrong."""
    if not verify(chains, run):
        return
    apply(chains, run)
    problems = verify(chains, run)
    if problems:
        raise NetworkPolicyError("the egress rules did not hold after installing them: " + "; ".join(problems))


def remove(network: str, run: Runner = run_command) -> None:
    """Take a network's chains out (their jumps, then the chains). For operators and tests; what is
    already gone is fine."""
    for family in (4, 6) if kernel_has_ipv6() else (4,):
        table = _tables(run, family)
        for name in chain_names(network):
            for hook in (DOCKER_USER, "FORWARD", "INPUT"):
                for _ in range(table.get(hook, []).count(f"-A {hook} -j {name}")):
                    run([_binary(family), "-w", "-D", hook, "-j", name], None)
            if name in table:
                run([_binary(family), "-w", "-F", name], None)
                run([_binary(family), "-w", "-X", name], None)
