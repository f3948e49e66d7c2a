"""The syslog sink: the engine hands it one tenant's events in order, it forwards them.

Who calls it: the delivery engine (``streams.engine``), through ``siem-export run syslog``.
Each event becomes one RFC 5424 message (``connectors.syslog.encoder``), framed for the
tenant's transport and written to a connection to its collector
(``connectors.syslog.transport``). Tenants with the same collector share one connection;
one batch's messages are written together, so a tenant's messages keep their order.

When events count as delivered (the engine commits only those):

    udp        when sent (lossy by nature; a message above max_datagram_bytes is never cut:
               it is dead-lettered, or with ``oversize: pause`` the lane stops, as misconfigured)
    tcp, tls   written, taken by the collector's TCP stack, and the connection still up
               ``confirm_seconds`` later (the transport module explains why)
    relp       the collector answered every message of the batch with 200

On any failure (no connection, a write error, the collector closing the connection) the
unconfirmed events stay in the lane and, after a few failures, in Kafka; the engine sends them
again, in order, after reconnecting with backoff: duplicates are possible, loss is not.
``connectors.health`` turns failures into the failing → disabled → recovered lifecycle and its
alert records, as for every connector. Tenants without a syslog destination (and no ``"*"``
default) are acknowledged without sending and counted as unrouted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from connectors.destinations import Destinations
from connectors.health import DestinationHealth
from connectors.syslog.config import TLS_TRANSPORTS, SyslogDestination, SyslogSettings
from connectors.syslog.encoder import encode, frame_lf, frame_octet_counted
from connectors.syslog.transport import Link, open_link
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError

_log = logging.getLogger(__name__)

METHOD = "syslog"
_SWEEP_EVERY_SECONDS = 30.0
_CONNECT_BACKOFF_SECONDS = 1.0
"""After a failed connect, other tenants of the collector fail at once for this long."""

TlsKey = tuple[Path | None, Path | None, Path | None]


@dataclass(eq=False)
class _Route:
    """A tenant's destination and what is derived from it once."""

    dest: SyslogDestination
    endpoint: str
    collector: _Collector | None
    refused: str | None


@dataclass(eq=False)
class _Collector:
    """One collector (destination) and its connection, shared by its tenants."""

    dest: SyslogDestination
    tls: ssl.SSLContext | None
    link: Link | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    down_until: float = 0.0
    down_reason: str = ""


class SyslogMetrics:
    """The connector's own series (the engine counts deliveries and latency)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "siem_export_syslog_messages",
            "Syslog messages written, by transport.",
            ["transport"],
            registry=registry,
        )
        self.oversize = Counter(
            "siem_export_syslog_oversize_messages",
            "UDP messages above max_datagram_bytes (dead-lettered or paused, never cut).",
            registry=registry,
        )
        self.connects = Counter(
            "siem_export_syslog_connects",
            "Connection attempts to collectors, by transport and result (ok, failed).",
            ["transport", "result"],
            registry=registry,
        )
        self.lost = Counter(
            "siem_export_syslog_connections_lost",
            "Connections that failed while in use (their unconfirmed messages are re-sent).",
            ["transport"],
            registry=registry,
        )
        self.open = Gauge(
            "siem_export_syslog_connections",
            "Open connections (and UDP sockets) to collectors.",
            registry=registry,
        )
        self.unrouted = Counter(
            "siem_export_syslog_unrouted_events",
            "Events of tenants without a syslog destination (acknowledged, not sent).",
            registry=registry,
        )


class SyslogSink:
    """Forwards events as RFC 5424 messages to each tenant's collector (see the docstring)."""

    name = METHOD
    max_batch = 1000

    def __init__(
        self,
        settings: SyslogSettings,
        destinations: Destinations,
        health: DestinationHealth,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.health = health
        self.metrics = SyslogMetrics(registry or REGISTRY)
        self._format = settings.message_format()
        self._destinations = destinations
        self._routes: dict[str, _Route | None] = {}
        self._collectors: dict[SyslogDestination, _Collector] = {}
        self._contexts: dict[TlsKey, ssl.SSLContext] = {}
        self._reported: dict[str, Link] = {}  # tenant -> link whose loss it was told of
        # (tenant, partition) -> first offset of a failed batch in custody, until it is resent
        self._resend_from: dict[tuple[str, int], int] = {}
        self._last_sweep = time.monotonic()
        self._closing: set[asyncio.Task[None]] = set()

    # --- configuration --------------------------------------------------------------------

    def update_destinations(self, old: Destinations, new: Destinations) -> None:
        """The destinations file changed: re-resolve every tenant whose collector changed."""
        self._destinations = new
        for tenant_id in list(self._routes):
            before, after = old.syslog_for(tenant_id), new.syslog_for(tenant_id)
            if before == after:
                continue
            del self._routes[tenant_id]
            if after is not None:
                self.health.reconfigured(tenant_id, after.endpoint())
            _log.info(
                "Syslog destination changed.",
                extra={"tenant": tenant_id, "endpoint": after.endpoint() if after else None},
            )

    def _route(self, tenant_id: str) -> _Route | None:
        if tenant_id in self._routes:
            return self._routes[tenant_id]
        dest = self._destinations.syslog_for(tenant_id)
        route = None
        if dest is not None:
            collector, refused = self._collector(dest)
            route = _Route(dest, dest.endpoint(), collector, refused)
            if refused is not None:
                return route  # not kept: the TLS files are tried again on the next attempt
        self._routes[tenant_id] = route
        return route

    def _collector(self, dest: SyslogDestination) -> tuple[_Collector | None, str | None]:
        collector = self._collectors.get(dest)
        if collector is not None:
            return collector, None
        tls: ssl.SSLContext | None = None
        if dest.transport in TLS_TRANSPORTS:
            try:
                tls = self._tls_context((dest.ca_bundle, dest.client_cert, dest.client_key))
            except OSError as exc:  # ssl.SSLError is an OSError
                return None, f"TLS material of {dest.endpoint()} cannot be loaded: {exc}"
        collector = self._collectors[dest] = _Collector(dest, tls)
        return collector, None

    def _tls_context(self, key: TlsKey) -> ssl.SSLContext:
        """A verifying context (hostname and chain) for a (CA bundle, cert, key) set."""
        ctx = self._contexts.get(key)
        if ctx is None:
            ca_bundle, cert, private_key = key
            ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
            if cert is not None:
                ctx.load_cert_chain(str(cert), str(private_key) if private_key else None)
            self._contexts[key] = ctx
        return ctx

    # --- delivery -------------------------------------------------------------------------

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        route = self._route(tenant_id)
        if route is None:
            self.metrics.unrouted.inc(len(batch))
            return None
        if route.collector is None:
            raise self._failed(tenant_id, route, route.refused or "unusable", misconfigured=True)
        if self.health.is_disabled(tenant_id, route.endpoint):
            raise SinkError(
                f"syslog collector {route.endpoint} is disabled; change the tenant's "
                "destination to re-enable it",
                retriable=False,
                retry_after=self.settings.disabled_retry_seconds,
            )
        dest = route.dest
        fmt = self._format
        messages = [encode(env, fmt) for env in batch]
        rejected: dict[int, str] = {}
        settled: int | None = None
        if dest.transport == "udp":
            frames: list[bytes] = []
            for index, message in enumerate(messages):
                if len(message) <= dest.max_datagram_bytes:
                    frames.append(message)
                    continue
                self.metrics.oversize.inc()
                reason = (
                    f"syslog message of {len(message)} bytes is larger than the UDP "
                    f"max_datagram_bytes {dest.max_datagram_bytes} of {route.endpoint}"
                )
                if dest.oversize == "dead_letter":
                    rejected[index] = reason + " (not truncated; use tcp or tls)"
                    continue
                if index == 0:
                    env = batch[0]
                    raise self._failed(
                        tenant_id,
                        route,
                        f"{reason} (tenant {tenant_id}, partition {env.partition}, offset "
                        f"{env.offset}); oversize is 'pause': raise max_datagram_bytes or "
                        "switch to tcp or tls",
                        misconfigured=True,
                    )
                settled = index  # send what precedes it; it comes back first next time
                break
        elif dest.transport in ("tcp", "tls"):
            frame = frame_lf if dest.framing == "lf" else frame_octet_counted
            frames = [frame(message) for message in messages]
        else:
            frames = messages  # RELP frames each message itself
        future = None
        if frames:
            future = await self._write(tenant_id, route, route.collector, batch, frames)
        if future is not None:
            where = (tenant_id, batch[0].partition)
            first = batch[0].offset
            future.add_done_callback(lambda f: self._confirmed(route, where, first, f))
        elif frames:
            self.health.success(tenant_id, route.endpoint)
        if future is None and not rejected and settled is None:
            return None
        return SendResult(rejected=rejected, pending=future, settled=settled)

    async def _write(
        self,
        tenant_id: str,
        route: _Route,
        collector: _Collector,
        batch: Sequence[Envelope],
        frames: list[bytes],
    ) -> asyncio.Future[None] | None:
        transport = collector.dest.transport
        where = (tenant_id, batch[0].partition)
        self._check_resend(route, where, batch[0].offset)  # before connecting for nothing
        link = await self._link(tenant_id, route, collector)
        self._check_resend(route, where, batch[0].offset)  # a batch may have failed meanwhile
        self._resend_from.pop(where, None)
        try:
            future = await link.send(frames)
        except SinkError as exc:
            self._reported[tenant_id] = link
            raise self._failed(tenant_id, route, str(exc)) from None
        self.metrics.messages.labels(transport).inc(len(frames))
        self._sweep()
        return future

    def _check_resend(self, route: _Route, where: tuple[str, int], first: int) -> None:
        resend_from = self._resend_from.get(where)
        if resend_from is not None and first > resend_from:
            # Sent before an earlier batch of the lane failed (the engine forgets its answer):
            # writing it now would put it ahead of that batch's second copy.
            raise SinkError(
                f"{route.endpoint}: an earlier batch of the tenant failed; not sending events "
                "after it before it is sent again",
                retriable=True,
            )

    async def _link(self, tenant_id: str, route: _Route, collector: _Collector) -> Link:
        link = collector.link
        if link is not None and link.lost is None:
            return link
        async with collector.lock:
            link = collector.link
            if link is not None and link.lost is None:
                return link
            if link is not None:
                collector.link = None
                self.metrics.open.dec()
                self.metrics.lost.labels(collector.dest.transport).inc()
                self._close_later(link)
            if time.monotonic() < collector.down_until:
                raise self._failed(tenant_id, route, collector.down_reason)
            transport = collector.dest.transport
            try:
                link = await open_link(collector.dest, self.settings, collector.tls)
            except SinkError as exc:
                self.metrics.connects.labels(transport, "failed").inc()
                collector.down_until = time.monotonic() + _CONNECT_BACKOFF_SECONDS
                collector.down_reason = str(exc)
                raise self._failed(tenant_id, route, str(exc)) from None
            self.metrics.connects.labels(transport, "ok").inc()
            self.metrics.open.inc()
            collector.link = link
            _log.info("Connected to a syslog collector.", extra={"endpoint": route.endpoint})
            return link

    def _confirmed(
        self,
        route: _Route,
        where: tuple[str, int],
        first: int,
        future: asyncio.Future[None],
    ) -> None:
        """A batch in custody was confirmed or failed: health, and the lane's resend point."""
        tenant_id = where[0]
        error = future.exception() if not future.cancelled() else None
        if not future.cancelled() and error is None:
            self._reported.pop(tenant_id, None)
            self.health.success(tenant_id, route.endpoint)
            return
        # The engine sends the lane again from this batch on (in order).
        self._resend_from[where] = min(first, self._resend_from.get(where, first))
        link = route.collector.link if route.collector is not None else None
        if link is None or self._reported.get(tenant_id) is link:
            return  # this loss was reported for the tenant already
        self._reported[tenant_id] = link
        self.health.failure(tenant_id, route.endpoint, str(error or "cancelled"))

    def _failed(
        self, tenant_id: str, route: _Route, reason: str, *, misconfigured: bool = False
    ) -> SinkError:
        state = self.health.failure(tenant_id, route.endpoint, reason, misconfigured=misconfigured)
        if state == "disabled":
            return SinkError(
                f"{reason} (collector disabled)",
                retriable=False,
                retry_after=self.settings.disabled_retry_seconds,
            )
        return SinkError(reason, retriable=not misconfigured)

    # --- connections ------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close connections nobody used for ``idle_close_seconds`` (at most every 30 s)."""
        now = time.monotonic()
        if now - self._last_sweep < _SWEEP_EVERY_SECONDS:
            return
        self._last_sweep = now
        for collector in self._collectors.values():
            link = collector.link
            if (
                link is not None
                and not link.busy()
                and now - link.last_used > self.settings.idle_close_seconds
                and not collector.lock.locked()
            ):
                collector.link = None
                self.metrics.open.dec()
                self._close_later(link)

    def _close_later(self, link: Link) -> None:
        task = asyncio.get_running_loop().create_task(link.close(), name="syslog-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        links = [c.link for c in self._collectors.values() if c.link is not None]
        for collector in self._collectors.values():
            collector.link = None
        self.metrics.open.set(0)
        for link in links:
            self._close_later(link)
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._closing, return_exceptions=True)
