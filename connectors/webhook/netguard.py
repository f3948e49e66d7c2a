"""SSRF guard for the webhook connector: where a customer-supplied URL may lead us.

The webhook transport POSTs audit events to a URL the customer typed in. Without a guard that URL
could point the exporter at our own network: the cloud metadata service (169.254.169.254), the
ops port on loopback, Kafka or other services on private, CGNAT or ULA addresses. So before any
connection is made we refuse loopback, private (RFC 1918), link-local, CGNAT, ULA, multicast,
unspecified, reserved, broadcast, benchmarking and documentation addresses, and IPv6 addresses
that embed a refused IPv4 address (IPv4-mapped/compatible, 6to4, NAT64) -- unless the operator
lists the range in SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS.

How the webhook transport (``connectors.webhook.transport``, over its own HTTP/1.1 client in
``connectors.webhook.http1``) uses it, before every new connection:

* ``policy.check_url(url, allow_http=...)``: scheme, credentials, and IP-literal hosts (the
  verdict is cached per URL string; the sink also runs it when a destination is configured);
* names are resolved through ``GuardedResolver(policy, inner).resolve_checked(host, port)``,
  which drops refused addresses and raises DestinationRefused if none is left; only checked
  answers are cached (60 s);
* the client connects to exactly those numeric addresses, in order (``AI_NUMERICHOST``: never
  looked up again), so the address checked is the address connected to: no DNS-rebinding
  window. TLS still verifies the URL's host name (SNI and certificate). Redirects are never
  followed, so no other URL is ever fetched.

DestinationRefused is not an OSError: a refusal is a configuration error for that tenant, not a
transient failure to retry.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

__all__ = [
    "AddressPolicy",
    "DestinationRefused",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_log = logging.getLogger(__name__)

ALLOW_SETTING = "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS"
_HINT = f"list the range in {ALLOW_SETTING} to allow it"

# An explicit table rather than ipaddress's is_private/is_global: those flags have changed
# between Python releases, and we want each refusal to name its category. First match wins, so
# the specific entries come before the ranges that contain them.
_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), category)
    for cidr, category in (
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address (RFC 1918)"),
        ("172.16.0.0/12", "a private address (RFC 1918)"),
        ("192.168.0.0/16", "a private address (RFC 1918)"),
        ("169.254.169.254/32", "the cloud metadata address (link-local)"),
        ("169.254.0.0/16", "a link-local address"),
        ("100.64.0.0/10", "a carrier-grade NAT address (RFC 6598)"),
        ("192.0.0.0/24", "an IETF protocol assignment address (RFC 6890)"),
        ("192.0.2.0/24", "a documentation address (RFC 5737)"),
        ("198.51.100.0/24", "a documentation address (RFC 5737)"),
        ("203.0.113.0/24", "a documentation address (RFC 5737)"),
        ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("fc00::/7", "a unique local address (fc00::/7)"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
        ("ff00::/8", "a multicast address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (RFC 8215)"),
        ("100::/64", "a discard-only address (RFC 6666)"),
        ("2001:db8::/32", "a documentation address (RFC 3849)"),
        ("3fff::/20", "a documentation address (RFC 9637)"),
    )
)

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationRefused(Exception):
    """The webhook destination is not allowed; ``reason`` says why, without URL secrets."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(reason)
        self.host = host
        self.reason = reason


def _embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address hands traffic to, if any, and how it is embedded."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "an IPv4-mapped IPv6 address"
    if ip.sixtofour is not None:
        return ip.sixtofour, "a 6to4 IPv6 address"
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return low32, "a NAT64 IPv6 address"
    # :: and ::1 are themselves (unspecified, loopback), not IPv4-compatible addresses.
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return low32, "an IPv4-compatible IPv6 address"
    return None


class AddressPolicy:
    """Which destination addresses the webhook connector may connect to."""

    def __init__(self, allowed_networks: Sequence[IPNetwork] = ()) -> None:
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(allowed_networks)

    def refusal(self, ip: IPAddress) -> str | None:
        """The refused category ``ip`` falls in (e.g. "a loopback address"), or None if allowed."""
        if any(ip in net for net in self.allowed_networks):
            return None
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            v4, how = embedded
            category = self.refusal(v4)
            return None if category is None else f"{category} ({v4}) inside {how}"
        for net, category in _REFUSED:
            if ip in net:
                return category
        return None

    def check_url(self, url: URL | str, *, allow_http: bool) -> None:
        """Refuse a webhook URL on its own merits, before any connection; raise DestinationRefused.

        Messages name only the host, never the path, query or userinfo (they may hold secrets).
        """
        try:
            url = URL(url)
        except ValueError:
            raise DestinationRefused("", "the webhook URL is not a valid URL") from None
        host = url.host
        if not host:
            raise DestinationRefused("", "the webhook URL has no host")
        if url.scheme != "https" and not (allow_http and url.scheme == "http"):
            allowed = "https or http" if allow_http else "https (plain http is not enabled)"
            raise DestinationRefused(
                host, f"the webhook URL for {host} uses scheme {url.scheme!r}; only {allowed}"
            )
        if url.user is not None or url.password is not None:
            raise DestinationRefused(
                host,
                f"the webhook URL for {host} contains credentials (user:password@); they would "
                "be logged and sent in clear to every redirect target -- configure them as "
                "authentication settings instead",
            )
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            # aiohttp's own heuristic (helpers.is_ip_address) would treat this host as a literal
            # and skip DNS, so a form we cannot parse (127.1, 2130706433) must not pass as a name.
            if ":" in host or host.replace(".", "").isdigit():
                raise DestinationRefused(host, f"{host} is not a canonical IP address") from None
            return
        # An IP-literal host is never resolved, so GuardedResolver never sees it: check here.
        category = self.refusal(ip)
        if category is not None:
            raise DestinationRefused(host, f"{host} is {category}; {_HINT}")


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and drops every address the policy refuses.

    The webhook client connects to the numeric ``host`` of each result returned (never
    resolved again), while TLS still verifies the URL's host name (SNI and certificate).
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        # ThreadedResolver binds the running loop, hence construction inside a loop.
        self.inner: AbstractResolver = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve_checked(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """Allowed addresses of ``host``; DestinationRefused if it has none (a pre-flight check)."""
        results = await self.inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in results:
            address = result["host"]
            try:
                category = self.policy.refusal(ipaddress.ip_address(address))
            except ValueError:
                # The connector would hand a non-numeric "address" to the socket layer, which
                # resolves it again: an unchecked lookup, so never let one through.
                category = "not a numeric IP address"
            if category is None:
                kept.append(result)
            elif (address, category) not in refused:
                refused.append((address, category))
        if not kept:
            if not refused:
                # Not a refusal; an empty list would trip an assert in the connector.
                raise OSError(f"{host} resolves to no address")
            if len(refused) == 1:
                address, category = refused[0]
                reason = f"{host} resolves to {address}, {category}; {_HINT}"
            else:
                listed = ", ".join(f"{address} ({category})" for address, category in refused)
                reason = f"{host} resolves only to refused addresses: {listed}; {_HINT}"
            raise DestinationRefused(host, reason)
        if refused:
            # Mixed answers are how DNS rebinding probes look; worth a trace.
            _log.warning(
                "webhook host %s: ignoring refused addresses %s",
                host,
                ", ".join(address for address, _ in refused),
            )
        return kept

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await self.resolve_checked(host, port, family)

    async def close(self) -> None:
        await self.inner.close()
