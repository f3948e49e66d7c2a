"""The webhook connector's HTTP client: guarded, pooled HTTP/1.1 over our own lean client.

Who calls it: the webhook sink, for each request. The transport owns connections, TLS and
timeouts and answers with an ``Answer`` (status and Retry-After) or raises ``DeliveryFailed``
(no answer: connection refused, reset, timeout, TLS failure, malformed answer) or
``DestinationRefused`` (the SSRF guard said no, or a header would inject). What an answer
*means* (ack, retry, pause, disable) is the sink's decision.

Per request: (1) the URL is checked by ``policy.check_url`` and parsed once (cached per URL
string); (2) the request is encoded in one buffer; (3) ``http1.ConnectionPool`` waits for a
FIFO turn and sends it on a kept-alive connection or a new one. A new connection goes only to
an address the guard checked: IP literals were checked by check_url, names are resolved
through ``GuardedResolver.resolve_checked`` (answers cached for 60 s, only checked ones), and
the pool connects to exactly those numeric addresses, in order: no DNS-rebinding window.

Connections: keep-alive, at most ``max_connections`` for the process and
``max_connections_per_host`` per origin (scheme, host, port, TLS material), so thousands of
tenants pointing at one SIEM share a small pool instead of opening thousands of sockets.
Requests queue for those connections in FIFO order, and the wait for a turn is not part of the
timeout. Redirects are never followed (a 3xx is an answer like any other). TLS verification is
always on; a destination may name its own CA bundle and a client certificate (mTLS): one
``ssl.SSLContext`` per distinct set, cached. A request that failed on a reused connection
before any byte of the answer arrived is sent once more on a fresh connection, so a receiver
may see a request twice (at-least-once; ``webhook-id`` lets it drop the copy).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from aiohttp.abc import AbstractResolver
from yarl import URL

from connectors.webhook.config import WebhookSettings
from connectors.webhook.http1 import (
    ConnectionPool,
    HostPool,
    HttpError,
    InvalidRequest,
    Origin,
    encode_request,
    request_prefix,
)
from connectors.webhook.netguard import AddressPolicy, DestinationRefused, GuardedResolver

_RETRY_AFTER_CAP_SECONDS = 86_400.0
_DNS_TTL_SECONDS = 60.0
_CACHE_LIMIT = 10_000
_DEFAULT_PORTS = {"https": 443, "http": 80}


class DeliveryFailed(Exception):
    """No HTTP answer (connection, TLS, timeout, malformed answer); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint answered."""

    status: int
    reason: str
    retry_after: float | None
    location: bool


TlsKey = tuple[Path | None, Path | None, Path | None]
Addresses = list[tuple[socket.AddressFamily, str]]


class WebhookTransport:
    """POSTs requests; create and close it inside the running event loop."""

    def __init__(
        self, settings: WebhookSettings, *, inner_resolver: AbstractResolver | None = None
    ) -> None:
        self.settings = settings
        self.policy = AddressPolicy(settings.allowed_networks)
        self._inner_resolver = inner_resolver
        self._resolver: GuardedResolver | None = None
        self._pool: ConnectionPool | None = None
        self._contexts: dict[TlsKey, ssl.SSLContext] = {}
        # (url, the caller's TLS context) -> (request line and Host, the origin's pool)
        self._routes: dict[tuple[str, ssl.SSLContext | None], tuple[bytes, HostPool]] = {}
        self._addresses: dict[tuple[str, int], tuple[float, Addresses]] = {}

    def tls_context(self, key: TlsKey) -> ssl.SSLContext:
        """The verifying TLS context for a (CA bundle, client cert, client key) set."""
        ctx = self._contexts.get(key)
        if ctx is None:
            ca_bundle, cert, private_key = key
            ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
            if cert is not None:
                ctx.load_cert_chain(str(cert), str(private_key) if private_key else None)
            self._contexts[key] = ctx
        return ctx

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], tls: ssl.SSLContext | None
    ) -> Answer:
        """POST ``body``; an Answer for any HTTP status, else DeliveryFailed/DestinationRefused.

        The wait for a connection turn is not part of the request's timeout: only the request
        itself (connect, send, answer) can time out.
        """
        route = self._routes.get((url, tls))
        if route is None:
            route = self._route(url, tls)
        prefix, host = route
        try:
            payload = encode_request(prefix, headers, body)
        except InvalidRequest as exc:
            raise DestinationRefused(host.origin.host, exc.reason) from None
        try:
            response = await self._client().request(host, payload)
        except HttpError as exc:
            raise DeliveryFailed(exc.reason) from exc
        retry_after = response.retry_after
        return Answer(
            response.status,
            response.reason,
            None if retry_after is None else parse_retry_after(retry_after),
            response.location,
        )

    @property
    def open_connections(self) -> int:
        """Connections open now (idle, busy or connecting), all origins together."""
        return 0 if self._pool is None else self._pool.open

    def _route(self, url: str, tls: ssl.SSLContext | None) -> tuple[bytes, HostPool]:
        """Check and parse ``url`` once: the guard's verdict, the request prefix, the pool."""
        # Step 1. The SSRF guard on the URL itself: scheme, credentials, IP literals.
        self.policy.check_url(url, allow_http=self.settings.allow_http)
        # Step 2. The same parser as the guard's, so the checked host is the one connected to.
        parsed = URL(url)
        host, scheme = parsed.raw_host or "", parsed.scheme
        default_port = _DEFAULT_PORTS[scheme]
        port = parsed.port if parsed.port is not None else default_port
        try:
            prefix = request_prefix(host, port, default_port, parsed.raw_path_qs)
        except (InvalidRequest, UnicodeEncodeError):
            raise DestinationRefused(
                host, f"the webhook URL for {host} cannot be sent as an HTTP request"
            ) from None
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = tls if tls is not None else self.tls_context((None, None, None))
        route = (prefix, self._client().host(Origin(scheme, host, port, context)))
        if len(self._routes) >= _CACHE_LIMIT:
            self._routes.clear()
        self._routes[(url, tls)] = route
        return route

    def _client(self) -> ConnectionPool:
        if self._pool is None:
            s = self.settings
            self._pool = ConnectionPool(
                self._resolve,
                max_connections=s.max_connections,
                max_connections_per_host=s.max_connections_per_host,
                timeout=s.timeout_seconds,
                connect_timeout=s.connect_timeout_seconds,
            )
        return self._pool

    async def _resolve(self, host: str, port: int) -> Sequence[tuple[socket.AddressFamily, str]]:
        """Checked numeric addresses of ``host``; DestinationRefused or OSError if none."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            # check_url refused this literal already if it had to; checked again for the record.
            category = self.policy.refusal(ip)
            if category is not None:
                raise DestinationRefused(host, f"{host} is {category}")
            return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, host)]
        now = time.monotonic()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._resolver is None:
            # ThreadedResolver (the default inner resolver) binds the running loop.
            self._resolver = GuardedResolver(self.policy, self._inner_resolver)
        results = await self._resolver.resolve_checked(host, port)
        addresses: Addresses = []
        for result in results:
            entry = (socket.AddressFamily(result["family"]), result["host"])
            if entry not in addresses:
                addresses.append(entry)
        if len(self._addresses) >= _CACHE_LIMIT:
            self._addresses = {k: v for k, v in self._addresses.items() if v[0] > now}
        self._addresses[(host, port)] = (now + _DNS_TTL_SECONDS, addresses)
        return addresses

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self._routes.clear()
        self._addresses.clear()
        if self._resolver is not None and self._inner_resolver is None:
            await self._resolver.close()
        self._resolver = None
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _RETRY_AFTER_CAP_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), _RETRY_AFTER_CAP_SECONDS)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
