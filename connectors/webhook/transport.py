"""The webhook connector's HTTP client: one guarded, pooled aiohttp session per process.

Who calls it: the webhook sink, for each request. The transport owns connections, TLS and
timeouts and answers with an ``Answer`` (status and Retry-After) or raises ``DeliveryFailed``
(no answer: connection refused, reset, timeout, TLS failure) or ``DestinationRefused`` (the SSRF
guard said no). What an answer *means* (ack, retry, pause, disable) is the sink's decision.

Connections: keep-alive, at most ``max_connections`` for the process and
``max_connections_per_host`` per host, so thousands of tenants pointing at one SIEM share a
small pool instead of opening thousands of sockets. Requests queue for those connections in
FIFO order (our own semaphores in front of aiohttp's pool): aiohttp hands a released connection
to whichever request asks next, so a tenant lane that re-sends at once would keep winning it
while another waited until its timeout (a false failure of a healthy endpoint). Redirects are
never followed (a 3xx is an answer like any other). TLS verification is always on; a
destination may name its own CA bundle and a client certificate (mTLS): one ``ssl.SSLContext``
per distinct set, cached.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from connectors.webhook.config import WebhookSettings
from connectors.webhook.netguard import AddressPolicy, guarded_session

_RETRY_AFTER_CAP_SECONDS = 86_400.0


class DeliveryFailed(Exception):
    """The request got no HTTP answer (connection, TLS or timeout); ``reason`` says which."""

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


class WebhookTransport:
    """POSTs requests; create and close it inside the running event loop."""

    def __init__(
        self, settings: WebhookSettings, *, inner_resolver: AbstractResolver | None = None
    ) -> None:
        self.settings = settings
        self.policy = AddressPolicy(settings.allowed_networks)
        self._inner_resolver = inner_resolver
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[TlsKey, ssl.SSLContext] = {}
        # Fair (FIFO) turns for connections, per (scheme, host:port) and for the process.
        self._host_slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._all_slots = asyncio.Semaphore(settings.max_connections)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            s = self.settings
            self._session = guarded_session(
                self.policy,
                allow_http=s.allow_http,
                inner_resolver=self._inner_resolver,
                connector_kwargs={
                    "limit": s.max_connections,
                    "limit_per_host": s.max_connections_per_host,
                    "ttl_dns_cache": 60,
                },
                timeout=aiohttp.ClientTimeout(
                    total=s.timeout_seconds,
                    connect=s.connect_timeout_seconds,
                ),
                # Our own headers only: never let the environment add proxies or auth.
                trust_env=False,
                auto_decompress=False,
            )
        return self._session

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
        parts = urlsplit(url)
        host = (parts.scheme, parts.netloc.lower())
        slot = self._host_slots.get(host)
        if slot is None:
            slot = self._host_slots[host] = asyncio.Semaphore(
                self.settings.max_connections_per_host
            )
        async with slot, self._all_slots:
            return await self._post(url, body, headers, tls)

    async def _post(
        self, url: str, body: bytes, headers: Mapping[str, str], tls: ssl.SSLContext | None
    ) -> Answer:
        try:
            async with self._client().post(
                url,
                data=body,
                headers=dict(headers),
                ssl=tls if tls is not None else True,
                allow_redirects=False,
            ) as resp:
                # Drain a little so the connection can be reused; the content is not used.
                await resp.content.read(65_536)
                return Answer(
                    resp.status,
                    resp.reason or "",
                    parse_retry_after(resp.headers.get("Retry-After")),
                    "Location" in resp.headers,
                )
        except TimeoutError as exc:
            raise DeliveryFailed(
                f"no answer within {self.settings.timeout_seconds:g} s (timeout)"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise DeliveryFailed(f"TLS failure: {_short(exc)}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise DeliveryFailed(f"connection failed: {_short(exc)}") from exc
        except aiohttp.ClientError as exc:
            raise DeliveryFailed(f"HTTP client error: {_short(exc)}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        # Let the connector's transports finish closing (aiohttp's documented grace).
        await asyncio.sleep(0)


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
