"""Which webhook targets are refused, judged on IP literals (no lookup: no packet leaves)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from agentfactory.runtime.outbound import UnsafeURL, pin, refused_because

REFUSED = [
    "127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "fe80::1", "100.64.0.1", "100.100.100.200", "224.0.0.1", "239.255.255.250", "0.0.0.0", "::",
    "240.0.0.1", "255.255.255.255", "fd00:ec2::254", "fc00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::a00:1", "2002:c0a8:101::1", "192.0.0.170", "198.18.0.1", "192.0.2.1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    assert refused_because(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refused_because(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/x",
     "https://user:pw@10.0.0.1/hook", "http://[::ffff:7f00:1]/"],
)  # fmt: skip
def test_urls_to_internal_addresses_are_refused_without_the_opt_in(url: str) -> None:
    with pytest.raises(UnsafeURL):
        asyncio.run(pin(url, allow_private=False))


@pytest.mark.parametrize(
    "url", ["ftp://8.8.8.8/", "file:///etc/passwd", "http:///nohost", "not a url", "http://8.8.8.8/#frag"]
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        asyncio.run(pin(url, allow_private=True))


def test_a_pinned_target_keeps_the_name_for_host_and_sni() -> None:
    target = asyncio.run(pin("https://user:pw@[::1]:8443/hook?x=1", allow_private=True))
    assert str(target.url) == "https://user:pw@[::1]:8443/hook?x=1"
    assert (target.host_header, target.sni_hostname) == ("[::1]:8443", "::1")
    plain = asyncio.run(pin("http://127.0.0.1:9000/h", allow_private=True))
    assert (str(plain.url), plain.host_header, plain.sni_hostname) == (
        "http://127.0.0.1:9000/h",
        "127.0.0.1:9000",
        None,
    )


def test_localhost_is_resolved_and_then_refused() -> None:
    with pytest.raises(UnsafeURL, match="loopback"):
        asyncio.run(pin("http://localhost:9/", allow_private=False))
    target = asyncio.run(pin("http://localhost:9/", allow_private=True))
    assert target.address.is_loopback and target.host_header == "localhost:9"
