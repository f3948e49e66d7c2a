"""Authentication audit events: each API authentication becomes a ``machine_account`` event.

Who calls it: ``Authenticator`` (``connectors.api.auth``) through the ``AuthEvents`` protocol;
``siem-export serve`` builds a ``KafkaAuthEvents`` over the platform's own publisher, so the
events travel the same topic as every other audit event and reach the tenant's SIEM (and this
API) like the rest.

Which action: ``machine_account.api_auth`` for an account that authenticated (outcome
``success``, or ``denied`` when it lacks the endpoint's scope) and
``machine_account.api_auth_failed`` for credentials that did not authenticate (``failure``),
both from the catalogue. ``metadata.reason`` carries the fixed reason word.

Which tenant: an audit event belongs to exactly one tenant, and publishing a stranger's
failed attempt into some tenant's audit log would be wrong for every tenant. So:

* a revoked account's token is attributed to that account's tenant (its owner should see
  that a revoked credential is still in use);
* a missing, malformed or unknown token has no tenant: nothing is published; the
  ``siem_export_api_auth_events{result="unattributed"}`` counter and
  ``siem_export_api_authentications{outcome="failure"}`` show the volume to the operator,
  and a DEBUG line records it (a WARNING per attempt would let anyone flood the log).

Delivery: the request does not wait for Kafka (an API that stops answering while Kafka is
away would punish the customer for our outage). The publisher is built with no queue-full
wait, so ``record`` never blocks the event loop; an event Kafka did not store is counted as
``lost`` and logged at ERROR, because it is a lost audit record.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from connectors.api.metrics import ApiMetrics
from streams.errors import InvalidEventError, PublishError
from streams.event import format_timestamp, validate_event

ACTION_SUCCESS = "machine_account.api_auth"
ACTION_FAILURE = "machine_account.api_auth_failed"
SERVICE = "siem-export-api"

_log = logging.getLogger(__name__)


class EventPublisher(Protocol):
    """The part of ``streams.publisher.Publisher`` used here."""

    def publish(self, event: Mapping[str, Any]) -> Future[Any]: ...


def auth_event(
    tenant_id: str,
    account_id: str | None,
    outcome: str,
    source_ip: str | None,
    reason: str,
    *,
    now_ms: int,
    event_id: str,
) -> dict[str, Any]:
    """The audit event of one attributed authentication (not yet validated)."""
    actor_id = account_id or "unknown"
    return {
        "event_id": event_id,
        "timestamp": format_timestamp(now_ms),
        "tenant_id": tenant_id,
        "actor": {"type": "machine_account", "id": actor_id, "email": None},
        "action": ACTION_SUCCESS if outcome != "failure" else ACTION_FAILURE,
        "resource": {"type": "machine_account", "id": actor_id, "name": None},
        "outcome": outcome,
        "metadata": {"reason": reason, "service": SERVICE},
        "source_ip": _ip_or_none(source_ip),
    }


class KafkaAuthEvents:
    """Publishes attributed authentications through the platform publisher (module docstring)."""

    def __init__(
        self,
        publisher: EventPublisher,
        metrics: ApiMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock

    def record(
        self,
        tenant_id: str | None,
        account_id: str | None,
        outcome: str,
        source_ip: str | None,
        reason: str,
    ) -> None:
        if tenant_id is None:
            self._metrics.auth_events.labels("unattributed").inc()
            _log.debug(
                "Authentication without a tenant not published.",
                extra={"reason": reason, "source_ip": source_ip},
            )
            return
        event = auth_event(
            tenant_id,
            account_id,
            outcome,
            source_ip,
            reason,
            now_ms=int(self._clock() * 1000),
            event_id=f"evt_{uuid.uuid4().hex}",
        )
        try:
            future = self._publisher.publish(validate_event(event))
        except (InvalidEventError, PublishError) as exc:
            self._lost(tenant_id, account_id, reason, exc)
            return
        future.add_done_callback(
            lambda f: self._delivered(f, tenant_id, account_id, reason),
        )

    def _delivered(
        self, future: Future[Any], tenant_id: str, account_id: str | None, reason: str
    ) -> None:
        # Runs on the publisher's callback thread; counters and logging are thread-safe.
        exc = future.exception()
        if exc is None:
            self._metrics.auth_events.labels("published").inc()
        else:
            self._lost(tenant_id, account_id, reason, exc)

    def _lost(
        self, tenant_id: str, account_id: str | None, reason: str, exc: BaseException
    ) -> None:
        self._metrics.auth_events.labels("lost").inc()
        _log.error(
            "Authentication audit event was not stored.",
            extra={
                "tenant": tenant_id,
                "account": account_id,
                "reason": reason,
                "error": str(exc)[:200],
            },
        )


class NoAuthEvents:
    """Records nothing; for tools and tests that run the API without Kafka."""

    def record(
        self,
        tenant_id: str | None,
        account_id: str | None,
        outcome: str,
        source_ip: str | None,
        reason: str,
    ) -> None:
        return None


def _ip_or_none(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None  # a unix socket or proxy name is not an address an event can carry
    return value
