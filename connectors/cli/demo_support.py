"""What the connector steps of ``siem-export demo`` share: a real connector process, and a tally.

Who calls it: the webhook step (``demo_webhook``) and the syslog step (``demo_syslog``). Each
starts its own local receiver, writes a destinations file for it and hands over to
:func:`run_connector`, which runs the real ``siem-export run METHOD`` as a child process in a
fresh consumer group with its own ops port, until the step says that everything arrived (at
most ``WAIT_SECONDS``), reads the connector's /metrics, stops it with SIGTERM and returns its
exit code. :class:`Arrivals` counts what a receiver got, per tenant, checks it against the order
of the topic and prints the verdict.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import click

from connectors.settings import Settings
from streams.errors import StreamsError

WAIT_SECONDS = 120.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ConnectorRun:
    """How one connector process went: time until all arrived, its metrics, its exit code."""

    seconds: float
    metrics: dict[str, float]
    code: int


@dataclass
class Arrivals:
    """Event ids a receiver got, per tenant, in arrival order (repeats kept, to count them)."""

    by_tenant: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, tenant_id: str, event_id: str) -> None:
        self.by_tenant[tenant_id].append(event_id)

    def distinct(self) -> int:
        return len({e for ids in self.by_tenant.values() for e in ids})

    def duplicates(self) -> int:
        return sum(len(v) for v in self.by_tenant.values()) - self.distinct()

    def in_order(self, expected: Mapping[str, list[str]]) -> int:
        """How many tenants' first arrivals are exactly their events in topic order."""
        return sum(
            1
            for t, ids in expected.items()
            if list(dict.fromkeys(self.by_tenant.get(t, []))) == ids
        )

    def per_tenant(self) -> str:
        return ", ".join(f"{t}={len(set(v))}" for t, v in sorted(self.by_tenant.items()))

    def conclude(
        self, method: str, expected: Mapping[str, list[str]], run: ConnectorRun, bad: int, what: str
    ) -> None:
        """Print the verdict: order, duplicates, ``bad`` ``what``, events per tenant, metrics.

        Raises StreamsError unless every event arrived, every tenant in topic order, nothing
        was bad (``what``: e.g. "bad signatures") and the connector exited with 0.
        """
        got, total = self.distinct(), sum(len(v) for v in expected.values())
        in_order = self.in_order(expected)
        click.echo(
            f"   {len(expected)} tenants, {in_order} received in partition order; "
            f"{self.duplicates()} duplicates; {bad} {what}; per tenant: {self.per_tenant()}"
        )
        if run.metrics:
            figures = ", ".join(f"{k}={v:g}" for k, v in sorted(run.metrics.items()))
            click.echo(
                f"   connector /metrics (earlier demo runs on this broker included): {figures}"
            )
        if got != total or in_order != len(expected) or bad or run.code != 0:
            raise StreamsError(
                f"{method} demo: {got}/{total} events, {in_order}/{len(expected)} tenants in "
                f"order, {bad} {what}, connector exit code {run.code}"
            )


async def run_connector(
    settings: Settings,
    method: str,
    destinations: Path,
    done: Callable[[], bool],
    metrics: Sequence[str],
    extra_env: Mapping[str, str] | None = None,
) -> ConnectorRun:
    """Run ``siem-export run METHOD --destinations FILE`` until ``done()`` (or the time limit).

    The process gets this demo's broker and topics, a consumer group of its own (which starts
    at the beginning of the topic, so earlier demo runs on the same broker are delivered too),
    a free ops port, WARNING logs and ``extra_env``. ``metrics`` are the /metrics series to
    report, e.g. ``'siem_export_delivered_total{connector="webhook"}'``.
    """
    ops_port = free_port()
    env = {
        **os.environ,
        "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SIEM_EXPORT_TOPICS__EVENTS": settings.topics.events,
        "SIEM_EXPORT_TOPICS__DLQ": settings.topics.dlq,
        "SIEM_EXPORT_TOPICS__ALERTS": settings.topics.alerts,
        "SIEM_EXPORT_ENGINE__GROUP_ID": f"siem-export-demo-{method}-{int(time.time())}",
        "SIEM_EXPORT_OPS__PORT": str(ops_port),
        "SIEM_EXPORT_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connectors", "run", method, "--destinations", str(destinations),
        env=env, preexec_fn=die_with_parent(),
    )  # fmt: skip
    began = time.monotonic()
    try:
        while not done() and proc.returncode is None:
            if time.monotonic() - began > WAIT_SECONDS:
                break
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - began
        figures = await _scrape(ops_port, metrics)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
    return ConnectorRun(seconds, figures, code)


async def _scrape(port: int, wanted: Sequence[str]) -> dict[str, float]:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    except aiohttp.ClientError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[name.split("{")[0].removeprefix("siem_export_")] = float(value)
    return found


def die_with_parent() -> Callable[[], object] | None:
    """A ``preexec_fn``: the kernel SIGTERMs the child if the demo dies without stopping it.

    Covers what no ``finally`` can (a SIGKILL). None where there is no ``prctl`` (not Linux).
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None).prctl  # looked up here: the child, between fork and exec, only calls
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
