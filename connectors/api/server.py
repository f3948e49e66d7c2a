"""The ``siem-export serve`` process: the API app on a socket, its ops endpoints, clean stops.

Who calls it: ``connectors.cli.serve``. Steps:

1. Open the store named by ``store.url``, with ``api.statement_timeout_seconds`` bounding every
   query, and bring its schema up to date (``migrate`` is safe from several replicas at once,
   and not bounded by the timeout), so a fresh SQLite file works out of the box.
2. Build the publisher of authentication audit events (``auth_events``) on the events topic.
3. Serve the API on ``--host``/``--port`` (default ``api.host``/``api.port``) and
   ``/metrics``, ``/healthz``, ``/readyz`` on ``ops.host``/``ops.port``.
4. On SIGTERM or SIGINT: report not ready, stop accepting, let requests in flight finish
   (bounded), flush the pending authentication events, close the store. Exit 0.

The process is stateless apart from per-replica rate-limit buckets; scale it with replicas.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from connectors.api.app import app_runner, make_app
from connectors.api.auth_events import KafkaAuthEvents
from connectors.api.metrics import ApiMetrics
from connectors.index.store import open_store, redact_url
from connectors.settings import Settings
from streams.publisher import Publisher

_log = logging.getLogger(__name__)
_SHUTDOWN_SECONDS = 10.0


async def serve_api(
    settings: Settings,
    host: str,
    port: int,
    *,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the API until a signal (or ``stop``); returns the exit code."""
    stop = stop or asyncio.Event()
    registry = registry or REGISTRY
    metrics = ApiMetrics(registry)
    # Step 1.
    url = settings.store.url.get_secret_value()
    store = open_store(
        url,
        pool_size=settings.store.pool_size,
        statement_timeout=settings.api.statement_timeout_seconds,
    )
    try:
        version = await store.migrate()
        _log.info("Store ready.", extra={"store": redact_url(url), "schema_version": version})
        # Step 2. No queue-full wait: recording an authentication never blocks a request.
        publisher = Publisher(settings.kafka, settings.topics.events, queue_full_timeout=0.0)
        try:
            app = make_app(
                store, settings.api, KafkaAuthEvents(publisher, metrics), metrics=metrics
            )
            await _serve(app, host, port, settings, registry, stop)
        finally:
            # Step 4 (tail). The events of the last authentications, before exiting.
            undelivered = await asyncio.to_thread(publisher.close, 10.0)
            if undelivered:
                _log.error(
                    "Authentication audit events were not stored before exit.",
                    extra={"count": undelivered},
                )
    finally:
        await store.close()
    return 0


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    settings: Settings,
    registry: CollectorRegistry,
    stop: asyncio.Event,
) -> None:
    """Step 3 and the head of step 4."""
    ready = True
    ops_app = web.Application()

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if ready:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unhealthy", "reason": "stopping"}, status=503)

    ops_app.router.add_get("/metrics", metrics)
    ops_app.router.add_get("/healthz", healthz)
    ops_app.router.add_get("/readyz", readyz)

    runner = app_runner(app, shutdown_timeout=_SHUTDOWN_SECONDS)
    ops_runner = web.AppRunner(ops_app, access_log=None)
    await runner.setup()
    await ops_runner.setup()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        if settings.ops.enabled:
            await web.TCPSite(ops_runner, settings.ops.host, settings.ops.port).start()
        _log.info(
            "API listening.",
            extra={
                "host": host,
                "port": runner.addresses[0][1],
                "ops_port": ops_runner.addresses[0][1] if ops_runner.addresses else None,
            },
        )
        await stop.wait()
        _log.info("API stopping.")
        ready = False
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        await ops_runner.cleanup()
    _log.info("API stopped.")
