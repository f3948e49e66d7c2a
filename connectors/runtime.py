"""Runs one connector process: the engine, its sink and the operability endpoints together.

Who calls it: ``siem-export run <method>`` (and the engine's process-level tests). SIGTERM
and SIGINT go to ``Engine.request_stop`` (the first drains and commits, a second stops at
once); the process exits 0 after a clean stop.
"""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import REGISTRY, CollectorRegistry

from connectors.ops import OpsServer
from connectors.settings import Settings
from streams.engine import Engine, Sink


async def run_connector(
    settings: Settings, sink: Sink, *, registry: CollectorRegistry | None = None
) -> int:
    """Consume and deliver until a signal; returns the process exit code."""
    metrics = registry or REGISTRY
    engine = Engine(settings.kafka, settings.topics, sink, settings.engine, registry=metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.request_stop)
    try:
        async with OpsServer(engine.health, metrics, settings.ops):
            await engine.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
