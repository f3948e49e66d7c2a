"""The operability endpoints of a connector process: metrics, liveness and readiness over HTTP.

Who calls it: ``siem-export run <method>`` starts one ``OpsServer`` next to the ``Engine``,
on the same event loop, with ``health=engine.health`` and the registry the engine's metrics
live in. Prometheus scrapes ``/metrics``; the orchestrator probes ``/healthz`` (restart when
it fails) and ``/readyz`` (route traffic and count the replica only while it passes).

    GET /metrics   Prometheus text exposition, or OpenMetrics when the Accept header asks.
    GET /healthz   200 while the poll loop turns, else 503 with the poll age as the reason.
    GET /readyz    200 while live, assigned partitions and not stopping, else 503 and why.

The health bodies copy a fixed list of ``EngineHealth`` fields, never the whole object, so a
field added to it later is not published until someone decides it is safe to publish.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, ConfigDict, Field

from streams.engine import EngineHealth

_log = logging.getLogger(__name__)

# The EngineHealth fields published by /healthz and /readyz (see the module docstring).
_PUBLISHED = (
    "live",
    "ready",
    "stopping",
    "poll_age_seconds",
    "partitions",
    "stalled",
    "buffered_events",
    "in_flight_events",
)


class OpsConfig(BaseModel):
    """Where the operability endpoints listen; the ``ops`` section of the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to listen on; 0.0.0.0 to be reachable from outside the pod.",
    )
    port: int = Field(
        default=9400, ge=0, le=65535, description="TCP port; 0 picks any free port (tests)."
    )
    enabled: bool = Field(default=True, description="False: serve nothing (no metrics, no probes).")


class OpsServer:
    """Serves /metrics, /healthz and /readyz for one process until ``stop``.

    Use ``async with OpsServer(...)`` or call ``start`` and ``stop``; ``port`` is the port
    actually bound (useful with ``port=0``), ``None`` before ``start`` or when disabled.
    """

    def __init__(
        self,
        health: Callable[[], EngineHealth],
        registry: CollectorRegistry,
        config: OpsConfig | None = None,
    ) -> None:
        self.config = config or OpsConfig()
        self._health = health
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int | None:
        return self._port

    async def start(self) -> None:
        """Bind and serve; raises ``OSError`` when the address cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("OpsServer is already started")
        if not self.config.enabled:
            _log.info("Ops endpoints disabled by configuration.")
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # No access log: probes and scrapes every few seconds would drown the useful lines.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        _log.info(
            "Ops endpoints listening.",
            extra={
                "host": self.config.host,
                "port": self._port,
                "paths": ["/metrics", "/healthz", "/readyz"],
            },
        )

    async def stop(self) -> None:
        """Stop listening and close open connections; safe to call more than once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        _log.info("Ops endpoints stopped.", extra={"port": self._port})
        self._port = None

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ handlers

    async def _metrics(self, request: web.Request) -> web.Response:
        # The library's own negotiation, so the content type always matches the bytes.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # ?name[]=a&name[]=b: only those series, as prometheus_client's own servers do (for
        # a frequent poller; only the named metrics are collected).
        names = request.query.getall("name[]", [])
        registry = self._registry.restricted_registry(names) if names else self._registry
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self._read_health()
        if health is None:
            return _unhealthy("health check failed", {})
        body = _published(health)
        if not health.live:
            return _unhealthy(_not_turning(health), body)
        return web.json_response({"status": "ok", **body})

    async def _readyz(self, request: web.Request) -> web.Response:
        health = self._read_health()
        if health is None:
            return _unhealthy("health check failed", {})
        body = _published(health)
        if health.ready:
            return web.json_response({"status": "ok", **body})
        if health.stopping:
            reason = "stopping"
        elif not health.live:
            reason = _not_turning(health)
        else:
            reason = "no partitions assigned yet"
        return _unhealthy(reason, body)

    def _read_health(self) -> EngineHealth | None:
        try:
            return self._health()
        except Exception as exc:  # a probe must answer, not crash the handler
            # Only the type: an exception's text is not ours to vouch for.
            _log.warning("Health check raised.", extra={"error_type": type(exc).__name__})
            return None


def _published(health: EngineHealth) -> dict[str, Any]:
    return {name: getattr(health, name) for name in _PUBLISHED}


def _not_turning(health: EngineHealth) -> str:
    # EngineHealth does not say whether the loop never started or got stuck; the age covers both.
    return f"poll loop is not turning; last poll {health.poll_age_seconds:.1f} seconds ago"


def _unhealthy(reason: str, body: dict[str, Any]) -> web.Response:
    return web.json_response({"status": "unhealthy", "reason": reason, **body}, status=503)
