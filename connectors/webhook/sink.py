"""The webhook sink: the engine hands it one tenant's events in order, it POSTs them.

Who calls it: the delivery engine (``streams.engine``), through ``siem-export run webhook``.
Each ``send`` makes ONE request of up to ``max_events_per_request`` events from the front of
the batch and settles just those (``SendResult.settled``); the engine offers the rest next, so
a lane is strictly ordered and nothing behind a failing event moves.

What an answer means:

    2xx                    acknowledged (the only thing that is)
    408, 429, 5xx,         retried with the engine's exponential backoff and jitter;
    no answer              429/503 Retry-After (seconds or HTTP-date) is honoured
    413                    a multi-event request is split in half (and the endpoint's
                           batch size stays halved); a single event goes to the DLQ
    410 Gone               the endpoint is disabled at once (alert); events stay in Kafka
    3xx                    not followed (SSRF): misconfigured, paused, alert
    other 4xx, SSRF refusal  misconfigured: paused (engine.paused_retry_seconds), alert

Nothing is ever dropped: a failure leaves the events in the lane (and, after a few failures,
in Kafka). ``connectors.health`` turns failures into the failing → disabled → recovered
lifecycle and its alert records. A disabled endpoint gets no requests; the lane checks
locally every ``disabled_retry_seconds`` whether a configuration change re-enabled it.

Tenants with no webhook in the destinations file (and no ``"*"`` default) did not ask for
webhooks: their events are acknowledged without a request and counted as unrouted.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from connectors.destinations import Destinations
from connectors.health import DestinationHealth
from connectors.webhook.config import WebhookDestination, WebhookSettings
from connectors.webhook.encoder import RequestEncoder
from connectors.webhook.netguard import DestinationRefused
from connectors.webhook.transport import Answer, DeliveryFailed, WebhookTransport
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError

_log = logging.getLogger(__name__)

METHOD = "webhook"
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)


@dataclass(eq=False)
class _Route:
    """A tenant's resolved destination and what is derived from it once."""

    dest: WebhookDestination
    endpoint: str
    encoder: RequestEncoder
    headers: dict[str, str] = field(repr=False)  # secret values
    tls: ssl.SSLContext | None
    refused: str | None
    cap: int


class WebhookMetrics:
    """The connector's own series (the engine counts deliveries and latency)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "siem_export_webhook_requests",
            "Webhook requests by result: HTTP status class, no_answer or refused.",
            ["result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "siem_export_webhook_request_seconds",
            "Time from sending a webhook request to its answer.",
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.unrouted = Counter(
            "siem_export_webhook_unrouted_events",
            "Events of tenants without a webhook destination (acknowledged, not sent).",
            registry=registry,
        )
        self.split = Counter(
            "siem_export_webhook_batch_splits",
            "Multi-event requests split in half after HTTP 413.",
            registry=registry,
        )
        # The per-status-class children, looked up once (labels() costs more than inc()).
        self._answered: dict[int, Counter] = {}

    def answered(self, status: int) -> None:
        """Count one request answered with HTTP ``status``."""
        status_class = status // 100
        child = self._answered.get(status_class)
        if child is None:
            child = self._answered[status_class] = self.requests.labels(f"{status_class}xx")
        child.inc()


class WebhookSink:
    """Delivers events by HTTPS POST to each tenant's endpoint (see the module docstring)."""

    name = METHOD
    max_batch = 1000

    def __init__(
        self,
        settings: WebhookSettings,
        destinations: Destinations,
        health: DestinationHealth,
        *,
        transport: WebhookTransport | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.health = health
        self.transport = transport or WebhookTransport(settings)
        self.metrics = WebhookMetrics(registry or REGISTRY)
        self._destinations = destinations
        self._routes: dict[str, _Route | None] = {}

    # --- configuration --------------------------------------------------------------------

    def update_destinations(self, old: Destinations, new: Destinations) -> None:
        """The destinations file changed: re-resolve every tenant whose webhook changed."""
        self._destinations = new
        for tenant_id in list(self._routes):
            before, after = old.webhook_for(tenant_id), new.webhook_for(tenant_id)
            if before == after:
                continue
            del self._routes[tenant_id]
            if after is not None:
                # A changed endpoint starts healthy; a disabled one is re-enabled this way.
                self.health.reconfigured(tenant_id, after.endpoint())
            _log.info(
                "Webhook destination changed.",
                extra={"tenant": tenant_id, "endpoint": after.endpoint() if after else None},
            )

    def _route(self, tenant_id: str) -> _Route | None:
        if tenant_id in self._routes:
            return self._routes[tenant_id]
        dest = self._destinations.webhook_for(tenant_id)
        route = None if dest is None else self._build(tenant_id, dest)
        self._routes[tenant_id] = route
        return route

    def _build(self, tenant_id: str, dest: WebhookDestination) -> _Route:
        refused: str | None = None
        try:
            self.transport.policy.check_url(dest.url, allow_http=self.settings.allow_http)
        except DestinationRefused as exc:
            refused = exc.reason
        tls: ssl.SSLContext | None = None
        if dest.url.startswith("https:") and (dest.ca_bundle or dest.client_cert):
            try:
                tls = self.transport.tls_context(
                    (dest.ca_bundle, dest.client_cert, dest.client_key)
                )
            except OSError as exc:  # ssl.SSLError is an OSError
                refused = f"TLS material of the destination cannot be loaded: {exc}"
        return _Route(
            dest=dest,
            endpoint=dest.endpoint(),
            encoder=RequestEncoder(tenant_id, dest, self.settings.splunk_host),
            headers={k: v.get_secret_value() for k, v in dest.headers.items()},
            tls=tls,
            refused=refused,
            cap=dest.max_events_per_request,
        )

    # --- delivery -------------------------------------------------------------------------

    def batch_limit(self, tenant_id: str) -> int:
        """Events the next request for this tenant carries at most (the engine decodes only
        those): the destination's ``max_events_per_request``, halved after a 413."""
        route = self._route(tenant_id)
        return self.max_batch if route is None else route.cap

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        route = self._route(tenant_id)
        if route is None:
            self.metrics.unrouted.inc(len(batch))
            return None
        if route.refused is not None:
            self.metrics.requests.labels("refused").inc()
            raise self._failed(tenant_id, route, route.refused, misconfigured=True)
        if self.health.is_disabled(tenant_id, route.endpoint):
            raise SinkError(
                f"webhook endpoint {route.endpoint} is disabled; change the tenant's "
                "destination to re-enable it",
                retriable=False,
                retry_after=self.settings.disabled_retry_seconds,
            )
        take = min(len(batch), route.cap)
        while True:
            events = batch if take == len(batch) else batch[:take]
            answer = await self._post(tenant_id, route, events)
            status = answer.status
            if 200 <= status < 300:
                self.health.success(tenant_id, route.endpoint)
                return None if take == len(batch) else SendResult(settled=take)
            if status == 413 and take > 1:
                # Too large for this endpoint: halve the request, keep the order.
                take = route.cap = max(1, take // 2)
                for env in batch[:take]:
                    env.restore()
                self.metrics.split.inc()
                continue
            if status == 413:
                env = batch[0]
                self.health.success(tenant_id, route.endpoint)
                return SendResult(
                    rejected={
                        0: f"HTTP 413 from {route.endpoint}: the event alone ({len(env.json)} "
                        "bytes) is larger than the endpoint accepts"
                    },
                    settled=1,
                )
            raise self._answer_failure(tenant_id, route, answer)

    async def _post(self, tenant_id: str, route: _Route, events: Sequence[Envelope]) -> Answer:
        request = route.encoder.encode(events)
        # The body holds what is sent: free the decoded events while they are still in the
        # CPU cache (a retry or a 413 split decodes them again from the record).
        for env in events:
            env.release()
        headers = {**route.headers, **request.headers}
        began = time.perf_counter()
        try:
            answer = await self.transport.post(route.dest.url, request.body, headers, route.tls)
        except DestinationRefused as exc:
            self.metrics.requests.labels("refused").inc()
            raise self._failed(tenant_id, route, exc.reason, misconfigured=True) from None
        except DeliveryFailed as exc:
            self.metrics.requests.labels("no_answer").inc()
            raise self._failed(tenant_id, route, f"{route.endpoint}: {exc.reason}") from None
        finally:
            self.metrics.seconds.observe(time.perf_counter() - began)
        self.metrics.answered(answer.status)
        return answer

    def _answer_failure(self, tenant_id: str, route: _Route, answer: Answer) -> SinkError:
        status = answer.status
        said = f"HTTP {status} {answer.reason}".rstrip() + f" from {route.endpoint}"
        if status == 410:
            return self._failed(tenant_id, route, f"{said}: endpoint gone", disable=True)
        if status in (408, 429) or status >= 500:
            wait = answer.retry_after if status in (429, 503) else None
            return self._failed(tenant_id, route, said, retry_after=wait)
        if 300 <= status < 400:
            return self._failed(
                tenant_id, route, f"{said}: redirects are not followed", misconfigured=True
            )
        return self._failed(tenant_id, route, f"{said}: check the URL and credentials", True)

    def _failed(
        self,
        tenant_id: str,
        route: _Route,
        reason: str,
        misconfigured: bool = False,
        *,
        disable: bool = False,
        retry_after: float | None = None,
    ) -> SinkError:
        state = self.health.failure(
            tenant_id, route.endpoint, reason, disable=disable, misconfigured=misconfigured
        )
        if state == "disabled":
            return SinkError(
                f"{reason} (endpoint disabled)",
                retriable=False,
                retry_after=self.settings.disabled_retry_seconds,
            )
        return SinkError(reason, retriable=not misconfigured, retry_after=retry_after)

    async def close(self) -> None:
        await self.transport.close()
