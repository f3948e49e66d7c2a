"""What the connector steps of ``siem-export demo`` share: child processes, and a tally.

Who calls it: the webhook (``demo_webhook``), syslog (``demo_syslog``), storage
(``demo_storage``) and REST API (``demo_api``) steps. Each starts its own local receiver or
server (:func:`server_process` runs rsyslogd, SeaweedFS or ``siem-export serve`` and stops it
whatever happens), writes a destinations file for it where the method takes one, and hands over
to :func:`run_connector`, which runs the real ``siem-export run METHOD`` as a child process in a
fresh consumer group with its own ops port, until the step says that everything arrived (at
most ``WAIT_SECONDS``), reads the connector's /metrics, stops it with SIGTERM and returns its
exit code. :class:`Arrivals` counts what a receiver got, per tenant, checks it against the order
of the topic and prints the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import click

from connectors.settings import Settings
from streams.errors import StreamsError

HOST = "127.0.0.1"
WAIT_SECONDS = 120.0
START_SECONDS = 30.0
STOP_SECONDS = 15.0
CONNECTOR_STOP_SECONDS = 45.0  # above the engine's default shutdown grace (20 s) plus commits
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
        self,
        method: str,
        expected: Mapping[str, list[str]],
        run: ConnectorRun,
        bad: int,
        what: str,
        *,
        exactly_once: bool = False,
    ) -> None:
        """Print the verdict: order, duplicates, ``bad`` ``what``, events per tenant, metrics.

        Raises StreamsError unless every event arrived, every tenant in topic order, nothing
        was bad (``what``: e.g. "bad signatures") and the connector exited with 0; with
        ``exactly_once`` also if any event arrived twice (a push method may repeat one after a
        lost answer; a bucket or a store that has every event once must not).
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
        repeated = self.duplicates() if exactly_once else 0
        if got != total or in_order != len(expected) or bad or repeated or run.code != 0:
            raise StreamsError(
                f"{method} demo: {got}/{total} events, {in_order}/{len(expected)} tenants in "
                f"order, {self.duplicates()} duplicates, {bad} {what}, connector exit code "
                f"{run.code}"
            )


def child_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``siem-export`` child process: this demo's broker and topics,
    WARNING logs, then ``extra`` (which wins)."""
    return {
        **os.environ,
        "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "SIEM_EXPORT_TOPICS__EVENTS": settings.topics.events,
        "SIEM_EXPORT_TOPICS__DLQ": settings.topics.dlq,
        "SIEM_EXPORT_TOPICS__ALERTS": settings.topics.alerts,
        "SIEM_EXPORT_LOG_LEVEL": "WARNING",
        **(extra or {}),
    }


async def run_connector(
    settings: Settings,
    method: str,
    destinations: Path | None,
    done: Callable[[], bool | Awaitable[bool]],
    metrics: Sequence[str],
    extra_env: Mapping[str, str] | None = None,
) -> ConnectorRun:
    """Run ``siem-export run METHOD [--destinations FILE]`` until ``done()`` (or the time limit).

    The process gets this demo's broker and topics, a consumer group of its own (which starts
    at the beginning of the topic, so earlier demo runs on the same broker are delivered too),
    a free ops port, WARNING logs and ``extra_env``. ``done`` may be a coroutine function (a
    step that asks a server what arrived). ``metrics`` are the /metrics series to report, e.g.
    ``'siem_export_delivered_total{connector="webhook"}'``.
    """
    ops_port = free_port()
    env = child_env(
        settings,
        {
            "SIEM_EXPORT_ENGINE__GROUP_ID": f"siem-export-demo-{method}-{int(time.time())}",
            "SIEM_EXPORT_OPS__PORT": str(ops_port),
            **(extra_env or {}),
        },
    )
    argv = [sys.executable, "-m", "connectors", "run", method]
    if destinations is not None:
        argv += ["--destinations", str(destinations)]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, preexec_fn=die_with_parent())
    began = time.monotonic()
    try:
        while proc.returncode is None and not await _finished(done):
            if time.monotonic() - began > WAIT_SECONDS:
                break
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - began
        figures = await _scrape(ops_port, metrics)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), CONNECTOR_STOP_SECONDS)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
            click.echo(
                f"   siem-export run {method} ignored SIGTERM for "
                f"{CONNECTOR_STOP_SECONDS:g} s: killed"
            )
    return ConnectorRun(seconds, figures, code)


async def _finished(done: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = done()
    return result if isinstance(result, bool) else await result


async def _scrape(port: int, wanted: Sequence[str]) -> dict[str, float]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://{HOST}:{port}/metrics") as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[name.split("{")[0].removeprefix("siem_export_")] = float(value)
    return found


@contextlib.contextmanager
def server_process(
    name: str,
    argv: Sequence[str],
    log: Path,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
    stop_seconds: float = STOP_SECONDS,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a local server of a step (rsyslogd, SeaweedFS, the REST API) for a ``with`` block.

    Its output goes to ``log`` (quoted in every error), its working directory is the log's.
    It runs in a session of its own, so Ctrl-C reaches only the demo, which stops it last; the
    kernel stops it if the demo is killed. Yields once ``HOST:port`` accepts connections (at
    most ``START_SECONDS``); raises StreamsError naming ``name`` if it exits first, never
    listens, or says that its address was taken (then the port answered for someone else).
    At the end: ``stop_signal``, then SIGKILL after ``stop_seconds`` (saying so); the caller
    may read the exit code from the yielded process afterwards.
    """
    with log.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    try:
        _wait_listening(name, proc, port, log)
        yield proc
    finally:
        _stop(name, proc, log, stop_signal, stop_seconds)


def _wait_listening(name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while proc.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                pass
        except OSError:
            if time.monotonic() > deadline:
                raise StreamsError(
                    f"{name} does not listen on {HOST}:{port} after {START_SECONDS:g} s:\n"
                    f"{tail(log)}"
                ) from None
            time.sleep(0.05)
            continue
        if "address already in use" in tail(log).lower():
            raise StreamsError(f"{name} could not bind {HOST}:{port}:\n{tail(log)}")
        return
    raise StreamsError(f"{name} exited with {proc.returncode} at start:\n{tail(log)}")


def _stop(
    name: str, proc: subprocess.Popen[bytes], log: Path, stop_signal: signal.Signals, seconds: float
) -> None:
    """Signal the server and wait for it (servers finish what they have first); SIGKILL if hung."""
    if proc.poll() is not None:
        return
    proc.send_signal(stop_signal)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        click.echo(
            f"   {name} did not stop within {seconds:g} s of {stop_signal.name}: killed; its "
            f"log ended with:\n{tail(log, 5)}"
        )


def tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` of a server's log, for error messages."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


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
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now (all held
    open together while they are chosen, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
