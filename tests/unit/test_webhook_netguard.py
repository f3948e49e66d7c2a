"""The webhook SSRF guard's decisions: address categories, allow list, URL checks, resolver."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from connectors.webhook.netguard import (
    AddressPolicy,
    DestinationRefused,
    GuardedResolver,
)

pytestmark = pytest.mark.unit

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700::1111",
    "11.0.0.1",
    "172.15.255.255",  # just outside 172.16.0.0/12
    "172.32.0.0",
    "100.63.255.255",  # just outside 100.64.0.0/10
    "100.128.0.0",
    "::ffff:8.8.8.8",  # mapped, public inside
    "64:ff9b::808:808",  # NAT64 of a public address
    "2002:808:808::1",  # 6to4 of a public address
]

REFUSED = [
    ("0.0.0.0", "unspecified"),  # noqa: S104 -- an address under test, not a bind
    ("::", "unspecified"),
    ("0.1.2.3", "'this network'"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private address (RFC 1918)"),
    ("172.16.0.1", "private address (RFC 1918)"),
    ("172.31.255.255", "private address (RFC 1918)"),
    ("192.168.1.1", "private address (RFC 1918)"),
    ("fd00::1", "unique local"),
    ("fc00::1", "unique local"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("fec0::1", "site-local"),
    ("100::1", "discard-only"),
    ("64:ff9b:1::1", "local-use NAT64"),
    # IPv6 forms judged by the IPv4 address they embed:
    ("::ffff:127.0.0.1", "loopback address (127.0.0.1) inside an IPv4-mapped"),
    ("::ffff:10.0.0.1", "private address (RFC 1918) (10.0.0.1) inside an IPv4-mapped"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:100.64.0.1", "carrier-grade NAT"),
    ("::ffff:255.255.255.255", "broadcast"),
    ("::ffff:240.0.0.1", "reserved"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "loopback address (127.0.0.1) inside an IPv4-compatible"),
    ("2002:7f00:1::1", "loopback address (127.0.0.1) inside a 6to4"),
    ("2002:a00:1::", "private address (RFC 1918) (10.0.0.1) inside a 6to4"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata address (link-local) (169.254.169.254) inside a NAT64"),
]


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "category"), REFUSED)
def test_internal_addresses_are_refused_with_their_category(address: str, category: str) -> None:
    refusal = AddressPolicy().refusal(ipaddress.ip_address(address))
    assert refusal is not None
    assert category in refusal


def test_allow_list_lets_only_the_listed_range_through() -> None:
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("127.1.2.3")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("10.0.0.1")) == "a private address (RFC 1918)"
    assert policy.refusal(ipaddress.ip_address("::1")) == "a loopback address"


def test_allow_list_takes_ipv6_networks() -> None:
    policy = AddressPolicy([ipaddress.ip_network("fd12:3456::/32")])
    assert policy.refusal(ipaddress.ip_address("fd12:3456::7")) is None
    assert policy.refusal(ipaddress.ip_address("fd99::7")) is not None


# check_url


@pytest.mark.parametrize(
    "url",
    [
        "https://siem.example.com/hook",
        "https://siem.example.com:8443/hook?x=1",
        "https://8.8.8.8/hook",
        "https://[2606:4700::1111]/hook",
    ],
)
def test_check_url_accepts_public_https(url: str) -> None:
    AddressPolicy().check_url(url, allow_http=False)


def test_http_needs_allow_http() -> None:
    with pytest.raises(DestinationRefused) as info:
        AddressPolicy().check_url("http://siem.example.com/hook", allow_http=False)
    assert info.value.host == "siem.example.com"
    assert "'http'" in info.value.reason
    assert "plain http is not enabled" in info.value.reason
    AddressPolicy().check_url("http://siem.example.com/hook", allow_http=True)


@pytest.mark.parametrize("allow_http", [False, True])
def test_other_schemes_are_refused(allow_http: bool) -> None:
    with pytest.raises(DestinationRefused, match="scheme 'ftp'"):
        AddressPolicy().check_url("ftp://siem.example.com/", allow_http=allow_http)


@pytest.mark.parametrize(
    ("url", "host", "category"),
    [
        ("https://127.0.0.1/", "127.0.0.1", "a loopback address"),
        ("https://10.0.0.5:8443/hook", "10.0.0.5", "a private address (RFC 1918)"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254", "cloud metadata"),
        ("https://100.64.0.1/", "100.64.0.1", "carrier-grade NAT"),
        ("https://[::1]:8443/", "::1", "a loopback address"),
        ("https://[fe80::1]/", "fe80::1", "a link-local address"),
        ("https://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "loopback address (127.0.0.1)"),
    ],
)
def test_refused_ip_literals(url: str, host: str, category: str) -> None:
    with pytest.raises(DestinationRefused) as info:
        AddressPolicy().check_url(url, allow_http=False)
    assert info.value.host == host
    assert info.value.reason.startswith(f"{host} is ")
    assert category in info.value.reason
    assert "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS" in info.value.reason
    assert str(info.value) == info.value.reason


def test_allow_list_applies_to_literals() -> None:
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])
    policy.check_url("http://127.0.0.1:8080/", allow_http=True)
    with pytest.raises(DestinationRefused, match="private"):
        policy.check_url("http://10.0.0.1:8080/", allow_http=True)


@pytest.mark.parametrize("url", ["https://127.1/", "https://2130706433/", "https://0177.0.0.1/"])
def test_non_canonical_numeric_hosts_are_refused(url: str) -> None:
    # aiohttp would take these for IP literals (skipping the resolver); socket maps them to
    # 127.0.0.1.
    with pytest.raises(DestinationRefused, match="not a canonical IP address"):
        AddressPolicy().check_url(url, allow_http=False)


@pytest.mark.parametrize(
    "url", ["https://alice:s3cr3t@siem.example.com/", "https://alice@siem.example.com/"]
)
def test_credentials_in_the_url_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(DestinationRefused) as info:
        AddressPolicy().check_url(url, allow_http=False)
    assert "credentials" in info.value.reason
    assert "alice" not in info.value.reason
    assert "s3cr3t" not in info.value.reason


@pytest.mark.parametrize(
    ("url", "message"),
    [("https:///hook", "no host"), ("/relative/hook", "no host"), ("http://[::1", "not a valid")],
)
def test_urls_without_a_usable_host(url: str, message: str) -> None:
    with pytest.raises(DestinationRefused, match=message):
        AddressPolicy().check_url(url, allow_http=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/hook-s3cr3tpath?token=hunter2",
        "http://siem.example.com/hook-s3cr3tpath?token=hunter2",
        "ftp://siem.example.com/hook-s3cr3tpath?token=hunter2",
        "https://alice:pw@siem.example.com/hook-s3cr3tpath?token=hunter2",
        "https://127.1/hook-s3cr3tpath?token=hunter2",
    ],
)
def test_messages_never_contain_path_or_query(url: str) -> None:
    with pytest.raises(DestinationRefused) as info:
        AddressPolicy().check_url(url, allow_http=False)
    for text in (info.value.reason, str(info.value), repr(info.value)):
        assert "hunter2" not in text
        assert "token" not in text
        assert "s3cr3tpath" not in text


# GuardedResolver


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)


class FakeResolver(AbstractResolver):
    """Answers each lookup with the next list of addresses; never touches the network."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int, socket.AddressFamily]] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append((host, port, family))
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [_result(host, address, port) for address in addresses]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_keeps_only_allowed_addresses(caplog: pytest.LogCaptureFixture) -> None:
    inner = FakeResolver(["10.0.0.5", "93.184.216.34", "127.0.0.1", "2606:4700::1111", "fd00::1"])
    resolver = GuardedResolver(AddressPolicy(), inner)
    with caplog.at_level(logging.WARNING, logger="connectors.webhook.netguard"):
        results = await resolver.resolve("siem.example.com", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700::1111"]
    assert all(r["port"] == 443 and r["hostname"] == "siem.example.com" for r in results)
    assert inner.calls == [("siem.example.com", 443, socket.AF_UNSPEC)]
    assert "10.0.0.5" in caplog.text and "fd00::1" in caplog.text


async def test_resolver_refuses_a_host_with_only_private_addresses() -> None:
    resolver = GuardedResolver(AddressPolicy(), FakeResolver(["10.0.0.5"]))
    with pytest.raises(DestinationRefused) as info:
        await resolver.resolve("api.example.com", 443)
    assert info.value.host == "api.example.com"
    assert info.value.reason == (
        "api.example.com resolves to 10.0.0.5, a private address (RFC 1918); "
        "list the range in SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS to allow it"
    )


async def test_resolver_names_every_refused_address() -> None:
    inner = FakeResolver(["169.254.169.254", "::1", "::1"])
    with pytest.raises(DestinationRefused) as info:
        await GuardedResolver(AddressPolicy(), inner).resolve_checked("meta.example.com", 80)
    assert info.value.reason.startswith(
        "meta.example.com resolves only to refused addresses: "
        "169.254.169.254 (the cloud metadata address (link-local)), ::1 (a loopback address);"
    )


async def test_resolver_refuses_answers_that_are_not_numeric() -> None:
    # The connector would resolve such an "address" again, unchecked.
    resolver = GuardedResolver(AddressPolicy(), FakeResolver(["internal.example.com"]))
    with pytest.raises(DestinationRefused, match="not a numeric IP address"):
        await resolver.resolve("siem.example.com", 443)


async def test_empty_answer_is_a_lookup_failure_not_a_refusal() -> None:
    resolver = GuardedResolver(AddressPolicy(), FakeResolver([]))
    with pytest.raises(OSError, match="no address"):
        await resolver.resolve("siem.example.com", 443)


async def test_dns_rebinding_second_answer_is_refused() -> None:
    resolver = GuardedResolver(AddressPolicy(), FakeResolver(["93.184.216.34"], ["127.0.0.1"]))
    first = await resolver.resolve("rebind.example.com", 443)
    assert [r["host"] for r in first] == ["93.184.216.34"]
    with pytest.raises(DestinationRefused, match="resolves to 127.0.0.1, a loopback address"):
        await resolver.resolve("rebind.example.com", 443)


async def test_resolver_honours_the_allow_list_and_closes_inner() -> None:
    inner = FakeResolver(["127.0.0.1", "10.0.0.1"])
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])
    resolver = GuardedResolver(policy, inner)
    assert [r["host"] for r in await resolver.resolve("localhost", 80)] == ["127.0.0.1"]
    await resolver.close()
    assert inner.closed


async def test_default_inner_resolver_is_threaded() -> None:
    import aiohttp

    assert isinstance(GuardedResolver(AddressPolicy()).inner, aiohttp.ThreadedResolver)
