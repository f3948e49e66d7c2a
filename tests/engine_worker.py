"""A connector process for the engine's process-level tests (kill -9, rebalance, SIGTERM).

    python -m tests.engine_worker --bootstrap B --topics JSON --group G --out FILE
                                  [--fail-file FILE] [--delay S] [--batch N]

Its sink appends one line per delivered event to ``--out``:
``tenant<TAB>partition<TAB>offset<TAB>event_id``, written and flushed per batch before it
acknowledges (so a kill -9 can lose an acknowledgement, never a delivery record). Tenants
listed in ``--fail-file`` (one per line, re-read every half second) fail with SinkError.
SIGTERM/SIGINT stop it the way a real connector stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from connectors.ops import OpsConfig
from connectors.runtime import run_connector
from connectors.settings import Settings
from streams.config import KafkaConfig, TopicsConfig
from streams.engine import EngineConfig, Envelope, SendResult
from streams.errors import SinkError


class FileSink:
    name = "worker"

    def __init__(self, out: Path, fail_file: Path | None, delay: float, batch: int) -> None:
        self._out = out.open("a", encoding="utf-8")
        self._fail_file = fail_file
        self._failing: set[str] = set()
        self._checked = 0.0
        self.delay = delay
        self.max_batch = batch

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._fail_file is None or now - self._checked < 0.5:
            return
        self._checked = now
        try:
            text = self._fail_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        self._failing = {line.strip() for line in text.splitlines() if line.strip()}

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        self._refresh()
        if self.delay:
            await asyncio.sleep(self.delay)
        if tenant_id in self._failing:
            raise SinkError(f"{tenant_id} is failing on command")
        now = time.time_ns()  # lets a test merge several processes' files in delivery order
        lines = "".join(
            f"{tenant_id}\t{e.partition}\t{e.offset}\t{e.event['event_id']}\t{now}\n" for e in batch
        )
        self._out.write(lines)
        self._out.flush()
        return None

    async def close(self) -> None:
        self._out.close()


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fail-file", type=Path, default=None)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--grace", type=float, default=20.0)
    parser.add_argument("--ops-port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sink = FileSink(args.out, args.fail_file, args.delay, args.batch)
    settings = Settings(
        kafka=KafkaConfig(bootstrap_servers=args.bootstrap),
        topics=TopicsConfig(**json.loads(args.topics)),
        engine=EngineConfig(
            group_id=args.group,
            commit_interval_seconds=0.5,
            retry_initial_seconds=0.05,
            retry_max_seconds=0.5,
            shutdown_grace_seconds=args.grace,
            session_timeout_ms=6000,
        ),
        ops=OpsConfig(port=args.ops_port),
    )
    registry = CollectorRegistry()
    run = asyncio.create_task(run_connector(settings, sink, registry=registry))
    while not run.done():
        ready = registry.get_sample_value(
            "siem_export_rebalances_total", {"connector": "worker", "event": "assigned"}
        )
        if ready is not None:
            print("READY", flush=True)
            break
        await asyncio.sleep(0.05)
    await run
    print("STOPPED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
