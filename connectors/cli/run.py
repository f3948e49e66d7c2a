"""``siem-export run <method>``: one delivery method as a consumer-group process.

Each method is its own process (and Kubernetes Deployment): it reads the audit topic in the
consumer group ``siem-export-<method>``, delivers through its sink, commits only what the
destination acknowledged, serves /metrics, /healthz and /readyz, and stops cleanly on
SIGTERM. Wrong settings or a wrong destinations file exit with 2 before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, Protocol

import click

from connectors.cli.context import EXIT_FAILURE, EXIT_USAGE, fail, settings_of
from connectors.destinations import Destinations, DestinationsWatcher, load_destinations
from connectors.errors import SettingsError
from connectors.health import DestinationHealth, HealthThresholds
from connectors.index.errors import StoreError
from connectors.index.sink import IndexSink
from connectors.index.store import open_store
from connectors.runtime import run_connector
from connectors.settings import Settings
from connectors.storage.sink import METHOD as STORAGE
from connectors.storage.sink import StorageSink
from connectors.syslog.sink import METHOD as SYSLOG
from connectors.syslog.sink import SyslogSink
from connectors.webhook.sink import METHOD as WEBHOOK
from connectors.webhook.sink import WebhookSink
from streams.alerts import AlertPublisher
from streams.engine.sink import Sink


class _ReloadableSink(Sink, Protocol):
    def update_destinations(self, old: Destinations, new: Destinations) -> None: ...


_log = logging.getLogger(__name__)
_STORE_WAIT_SECONDS = 60.0
"""How long ``run index`` waits for an unreachable audit store at start-up before exiting 1."""

_DESTINATIONS_OPTION = click.option(
    "--destinations",
    "destinations_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML file of per-tenant destinations (or SIEM_EXPORT_DESTINATIONS_FILE).",
)


@click.group()
def run() -> None:
    """Run one delivery method (a consumer-group process; scale it with replicas)."""


@run.command("webhook")
@_DESTINATIONS_OPTION
@click.pass_context
def webhook(ctx: click.Context, destinations_file: Path | None) -> None:
    """Deliver each tenant's events by HTTPS POST to its webhook endpoint, in order."""
    _serve(
        ctx,
        destinations_file,
        WEBHOOK,
        lambda s: s.webhook,
        lambda s, d, h: WebhookSink(s.webhook, d, h),
    )


@run.command("syslog")
@_DESTINATIONS_OPTION
@click.pass_context
def syslog(ctx: click.Context, destinations_file: Path | None) -> None:
    """Forward each tenant's events as RFC 5424 syslog (UDP, TCP, TLS or RELP), in order."""
    _serve(
        ctx,
        destinations_file,
        SYSLOG,
        lambda s: s.syslog,
        lambda s, d, h: SyslogSink(s.syslog, d, h),
    )


@run.command("storage")
@_DESTINATIONS_OPTION
@click.pass_context
def storage(ctx: click.Context, destinations_file: Path | None) -> None:
    """Write each tenant's events as JSON Lines / JSON files to its S3, Azure or GCS bucket."""
    _serve(
        ctx,
        destinations_file,
        STORAGE,
        lambda s: s.storage,
        lambda s, d, h: StorageSink(s.storage, d, h),
    )


@run.command("index")
@click.pass_context
def index(ctx: click.Context) -> None:
    """Index every tenant's events into the audit store the REST API serves (SQLite/PostgreSQL)."""
    settings = settings_of(ctx)
    raise SystemExit(asyncio.run(_run_index(settings)))


async def _run_index(settings: Settings) -> int:
    cfg = settings.store
    store = open_store(cfg.url.get_secret_value(), pool_size=cfg.pool_size)
    deadline = time.monotonic() + _STORE_WAIT_SECONDS
    while True:
        try:
            version = await store.migrate()
            break
        except StoreError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                await store.close()
                click.echo(f"siem-export: audit store: {exc}", err=True)
                return EXIT_FAILURE
            _log.warning("Audit store not reachable yet; retrying.", extra={"error": str(exc)})
            await asyncio.sleep(2.0)
    _log.info("Audit store ready.", extra={"schema_version": version})
    sink = IndexSink(store, cfg)
    retention = asyncio.create_task(sink.run_retention(), name="index-retention")
    try:
        return await run_connector(settings, sink)
    finally:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention


class _MethodSettings(Protocol):
    @property
    def health(self) -> HealthThresholds: ...
    @property
    def reload_seconds(self) -> float: ...


def _serve(
    ctx: click.Context,
    option: Path | None,
    method: str,
    section: Callable[[Settings], _MethodSettings],
    build: Callable[[Settings, Destinations, DestinationHealth], _ReloadableSink],
) -> NoReturn:
    """Load settings and destinations (exit 2 if wrong), run the method, exit with its code."""
    settings = settings_of(ctx)
    path, destinations = _destinations(settings, option)
    cfg = section(settings)
    raise SystemExit(
        asyncio.run(
            _run_method(
                settings,
                path,
                destinations,
                method,
                cfg.health,
                cfg.reload_seconds,
                lambda health: build(settings, destinations, health),
            )
        )
    )


def _destinations(settings: Settings, option: Path | None) -> tuple[Path, Destinations]:
    path = option or settings.destinations_file
    if path is None:
        raise fail(
            "no destinations file: pass --destinations FILE or set SIEM_EXPORT_DESTINATIONS_FILE",
            EXIT_USAGE,
        )
    try:
        return path, load_destinations(path)
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


async def _run_method(
    settings: Settings,
    path: Path,
    destinations: Destinations,
    method: str,
    thresholds: HealthThresholds,
    reload_seconds: float,
    build: Callable[[DestinationHealth], _ReloadableSink],
) -> int:
    """Alerts, health, the sink, a watcher of the destinations file, and the engine."""
    alerts = AlertPublisher(settings.kafka, settings.topics.alerts)
    try:
        sink = build(DestinationHealth(method, thresholds, alerts.publish))
        watcher = DestinationsWatcher(
            path, sink.update_destinations, interval=reload_seconds, current=destinations
        )
        reload = asyncio.create_task(watcher.run(), name="destinations-reload")
        try:
            return await run_connector(settings, sink)
        finally:
            reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reload
    finally:
        await asyncio.to_thread(alerts.close)
