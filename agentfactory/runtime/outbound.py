"""Outbound safety for webhooks: which URLs may be called, and pinning a call to a checked address.

A webhook URL is checked when it is registered and again before every attempt (DNS may answer
differently later: DNS rebinding), and the attempt connects to the very address that was checked,
not to whatever a second lookup would return. Loopback, private, link-local (cloud metadata),
shared (CGNAT), multicast, reserved and unspecified addresses are refused unless the operator
allows private targets; addresses embedding an IPv4 one (mapped, NAT64, 6to4) are judged by it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


class UnsafeURL(ValueError):
    """The URL may not be called: a bad scheme or host, no address, or a refused address."""


def refused_because(addr: IPAddress) -> str | None:
    """Why an address may not be a webhook target (None: a public address)."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped
        if embedded is None and addr in NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is None and addr in SIX_TO_FOUR:
            embedded = addr.sixtofour
        if embedded is not None:
            return refused_because(embedded)
    checks = (
        (addr.is_loopback, "loopback"),
        (addr.is_link_local, "link-local (cloud metadata)"),
        (addr.is_multicast, "multicast"),
        (addr.is_unspecified, "unspecified"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in CGNAT, "shared address space (CGNAT)"),
        (addr.is_private, "private"),
        (addr.is_reserved, "reserved"),
        (not addr.is_global, "not globally routable"),
    )
    return next((why for hit, why in checks if hit), None)


def parse_url(url: str) -> httpx.URL:
    """The URL if it is an absolute http(s) URL with a host; else UnsafeURL."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeURL(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL("the URL must be http:// or https://")
    if not parsed.host:
        raise UnsafeURL("the URL has no host")
    if parsed.fragment:
        raise UnsafeURL("the URL must not have a #fragment")
    return parsed


async def resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    """The host's addresses: an IP literal as it is (no lookup), a name through the resolver."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise UnsafeURL(f"cannot resolve {host!r}: {exc or 'timed out'}") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if addr not in found:
            found.append(addr)
    if not found:
        raise UnsafeURL(f"{host!r} has no address")
    return found


@dataclass(frozen=True)
class Pinned:
    """A request target pinned to a checked address: connect to `url` (the address in place of the
    name), send `host_header`, and for https verify the certificate for `sni_hostname`."""

    url: httpx.URL
    host_header: str
    sni_hostname: str | None
    address: IPAddress


async def pin(url: str, *, allow_private: bool, timeout: float = 5.0) -> Pinned:
    """Check the URL and every address its host resolves to; the target pinned to the first one.
    UnsafeURL when the URL is malformed, unresolvable, or any address is refused."""
    parsed = parse_url(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve(parsed.host, port, timeout)
    if not allow_private:
        for addr in addresses:
            why = refused_because(addr)
            if why is not None:
                raise UnsafeURL(f"{parsed.host} is {addr}, a {why} address (see AGENTFACTORY_WEBHOOK_ALLOW_PRIVATE)")
    addr = addresses[0]
    host_header = parsed.netloc.decode("ascii").rpartition("@")[2]
    return Pinned(
        url=parsed.copy_with(host=str(addr)),
        host_header=host_header,
        sni_hostname=parsed.host if parsed.scheme == "https" else None,
        address=addr,
    )
