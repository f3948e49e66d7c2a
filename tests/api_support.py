"""Helpers of the REST API tests: events with chosen fields, a seeded store, a running app.

``event(...)`` builds a canonical event (``validate_event``) with the fields a test cares
about; ``indexed`` turns it into the row the index writes, body included. ``RecordingAuthEvents``
keeps what the API recorded. ``running_api`` serves ``make_app`` on a free port of 127.0.0.1
over a real socket and yields its base URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from connectors.api.app import app_runner, make_app
from connectors.api.auth import AuthEvents
from connectors.api.config import ApiSettings
from connectors.api.metrics import ApiMetrics
from connectors.api.ports import ApiStore
from connectors.index.model import IndexedEvent
from streams.event import AuditEvent, format_timestamp, to_json_bytes, validate_event

TENANT_A = "tnt_alpha"
TENANT_B = "tnt_bravo"
SECRET = SecretStr("cursor-secret-for-tests-0123456789abcdef")
# 2026-03-15T00:00:00.000Z
T0 = 1773532800000


def api_settings(**changes: Any) -> ApiSettings:
    """Settings with a cursor secret and a rate limit high enough not to get in the way."""
    values: dict[str, Any] = {
        "cursor_secret": SECRET,
        "rate_per_second": 10_000.0,
        "burst": 10_000,
    }
    values.update(changes)
    return ApiSettings(**values)


def event(
    tenant_id: str,
    event_id: str,
    ts_ms: int,
    *,
    action: str = "certificate.issue",
    actor_id: str = "usr_k1l2m3n4",
    actor_type: str = "user",
    resource_type: str = "certificate",
    resource_id: str = "crt_o5p6q7r8",
    outcome: str = "success",
    source_ip: str | None = "203.0.113.42",
) -> AuditEvent:
    """A canonical event with the given fields (the rest as in the spec's example)."""
    return validate_event(
        {
            "event_id": event_id,
            "timestamp": format_timestamp(ts_ms),
            "tenant_id": tenant_id,
            "actor": {"type": actor_type, "id": actor_id, "email": "[email protected]"},
            "action": action,
            "resource": {"type": resource_type, "id": resource_id, "name": "api.example.com"},
            "outcome": outcome,
            "metadata": {"ca_id": "ca_s9t0u1v2", "validity_days": 365},
            "source_ip": source_ip,
        }
    )


def indexed(ev: AuditEvent) -> IndexedEvent:
    """The index row of an event, with the exact bytes every method delivers."""
    return IndexedEvent.from_event(ev, to_json_bytes(ev))


@dataclass(frozen=True)
class AuthRecord:
    tenant_id: str | None
    account_id: str | None
    outcome: str
    source_ip: str | None
    reason: str


class RecordingAuthEvents:
    """An ``AuthEvents`` that keeps every record in order."""

    def __init__(self) -> None:
        self.records: list[AuthRecord] = []

    def record(
        self,
        tenant_id: str | None,
        account_id: str | None,
        outcome: str,
        source_ip: str | None,
        reason: str,
    ) -> None:
        self.records.append(AuthRecord(tenant_id, account_id, outcome, source_ip, reason))


@asynccontextmanager
async def running_api(
    store: ApiStore,
    settings: ApiSettings | None = None,
    auth_events: AuthEvents | None = None,
    *,
    metrics: ApiMetrics | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[str]:
    """Serve the API over ``store`` on 127.0.0.1 (free port); yields ``http://127.0.0.1:P``."""
    kwargs: dict[str, Any] = {"metrics": metrics or ApiMetrics()}
    if clock is not None:
        kwargs["clock"] = clock
    app = make_app(
        store, settings or api_settings(), auth_events or RecordingAuthEvents(), **kwargs
    )
    runner = app_runner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
