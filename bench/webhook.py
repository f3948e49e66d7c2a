"""Webhook connector throughput and latency against a real HTTP receiver, vs the raw ceiling.

    .venv/bin/python bench/webhook.py [--count 100000] [--tenants 100] [--partitions 12]
                                      [--latency-seconds 15] [--latency-rate 1000]
                                      [--latency-per-request 1] [--connections-per-host N]
                                      [--phases single,even,batched,latency] [--https] [--profile]
                                      [--bootstrap HOST:PORT]

The connector runs as production runs it: ``python -m connectors run webhook`` in a child
process, configured only through SIEM_EXPORT_* variables and a destinations file
(``"*": {webhook: {url: http://127.0.0.1:PORT/in, max_events_per_request: N}}``), with its ops
endpoints on a free port (/readyz says when it has partitions, /metrics is scraped at the end).
The receiver is an aiohttp server in another child process (plain http by default, https with
a trustme certificate with --https): it answers 204, counts events (a JSON object is one, an
array its length) and records every event id per tenant in arrival order, with the arrival
time (time.time()) of each id's first copy.

(1) publish N events (--count) of --tenants tenants to a fresh --partitions topic with the real
    publisher; (2) ceiling: a bare consumer decodes every record and encodes it to JSON,
    measured again after each delivery phase: a phase is compared with the two ceiling
    passes around it taken together;
(3) 1 event per POST, fresh consumer group: rates from launch / readiness / first arrival to
    the receiver holding all N distinct events. The synthetic tenants are skewed (the largest
    has ~12% of the events), and one event per POST means one request in flight per tenant, so
    this phase ends when the largest tenant's sequence of round trips does; (3b) the same
    events with their tenants spread evenly (same count of tenants), which measures the
    process rather than one tenant's chain of round trips; (4) max_events_per_request: 100;
(5) latency: fresh topic and group, connector ready and warmed up, then events published at
    --latency-rate for --latency-seconds; publish-call time (time.time()) to receive time,
    p50/p99/max, next to the same events' latency to a bare consumer in this script (the
    Kafka path alone, polling without waiting for a batch to fill).
After each phase the connector is stopped (SIGTERM: drain and commit) and what the receiver
got is checked against what was published: duplicates, missing, tenants out of order. Each
delivery phase also prints the connector's CPU per event (all its threads, readiness to the last
event) next to the ceiling's (this process while it consumed, decoded and encoded): when other
processes take the cores, rates swing by a third within minutes and CPU per event much less.
With --profile, extra passes (1 and 100 events per POST) run the connector under cProfile
(the asyncio loop thread only) and print where its time goes.

The machine has 2 cores shared by the Kafka broker (JVM), the connector, the receiver and this
script: the receiver's CPU is CPU the connector does not get. The whole run aborts past 15
minutes; every child process (and the broker, if this script started it) is stopped on exit,
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing
import platform
import pstats
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from connectors.webhook.config import WebhookSettings  # noqa: E402
from streams.codec import AuditEventCodec  # noqa: E402
from streams.config import KafkaConfig, TopicsConfig  # noqa: E402
from streams.engine.config import EngineConfig  # noqa: E402
from streams.publisher import Publisher, producer_config  # noqa: E402
from streams.synthetic import EventFactory  # noqa: E402
from streams.tail import tail_consumer_config  # noqa: E402

BATCHED = 100  # max_events_per_request of the batched phase
WARMUP_EVENTS = 500  # published (at the latency rate) before the latency measurement
WEBHOOK_METRICS = (
    "siem_export_webhook_requests",
    "siem_export_webhook_request_seconds",
    "siem_export_webhook_batch_splits",
)
WEBHOOK_MEANS = {
    "siem_export_webhook_request_seconds": "mean request time (queue for a connection included)",
    **_common.DELIVERY_LATENCY_MEAN,
}


# --- the receiver (child process) ----------------------------------------------------------------


class ReceiverState:
    """What the receiver recorded since the last reset (lives in the receiver process)."""

    def __init__(self) -> None:
        self.reset("idle", 0)

    def reset(self, phase: str, target: int) -> None:
        self.phase = phase
        self.target = target
        self.requests = 0
        self.events = 0
        self.bad_requests = 0
        self.peers: set[Any] = set()
        self.sizes: Counter[int] = Counter()
        self.tenant_requests: Counter[str] = Counter()
        self.by_tenant: defaultdict[str, list[str]] = defaultdict(list)
        self.arrival: dict[str, float] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.done_at: float | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.bad_requests += 1
            return web.Response(status=400)
        events = data if isinstance(data, list) else [data]
        self.requests += 1
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.events += len(events)
        self.sizes[len(events)] += 1
        if events:
            self.tenant_requests[events[0]["tenant_id"]] += 1
        arrival = self.arrival
        by_tenant = self.by_tenant
        for event in events:
            event_id = event["event_id"]
            by_tenant[event["tenant_id"]].append(event_id)
            if event_id not in arrival:
                arrival[event_id] = now
        if self.first is None:
            self.first = now
        self.last = now
        if self.done_at is None and self.target and len(arrival) >= self.target:
            self.done_at = now
        return web.Response(status=204)

    def progress(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "requests": self.requests,
            "events": self.events,
            "distinct": len(self.arrival),
            "first": self.first,
            "last": self.last,
            "done_at": self.done_at,
            "bad_requests": self.bad_requests,
            "connections": len(self.peers),
        }

    def stats(self) -> dict[str, Any]:
        return self.progress() | {
            "sizes": dict(self.sizes),
            "tenant_requests": dict(self.tenant_requests),
            "by_tenant": dict(self.by_tenant),
            "arrival": self.arrival,
        }


def receiver_main(conn: Connection, tls_files: tuple[str, str] | None) -> None:
    """Child process: serve POST /in until told to stop; commands arrive on ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, also on Ctrl-C
    asyncio.run(_serve(conn, tls_files))


async def _serve(conn: Connection, tls_files: tuple[str, str] | None) -> None:
    state = ReceiverState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/in", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tls: ssl.SSLContext | None = None
    if tls_files is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(tls_files[0], tls_files[1])
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls, backlog=1024)
    await site.start()
    conn.send(("port", int(runner.addresses[0][1])))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        try:
            command, arg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            stopped.set()
            return
        if command == "reset":
            state.reset(*arg)
            conn.send(None)
        elif command == "progress":
            conn.send(state.progress())
        elif command == "stats":
            conn.send(state.stats())
        else:  # "stop"
            loop.remove_reader(conn.fileno())
            conn.send(None)
            stopped.set()

    loop.add_reader(conn.fileno(), on_command)
    await stopped.wait()
    await runner.cleanup()


class Receiver:
    """The parent's handle on the receiver process (a context manager that stops it)."""

    def __init__(self, tls_files: tuple[str, str] | None) -> None:
        self.tls_files = tls_files
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(
            target=receiver_main, args=(child_conn, tls_files), name="bench-receiver"
        )
        self._child_conn = child_conn
        self.port = 0

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def __enter__(self) -> Receiver:
        self._process.start()
        self._child_conn.close()
        _, self.port = self._call_reply(60)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            if self._process.is_alive():
                self._conn.send(("stop", None))
                self._call_reply(5)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()

    def _call_reply(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            alive = "alive" if self._process.is_alive() else f"exit {self._process.exitcode}"
            raise RuntimeError(f"the receiver did not answer within {timeout:g} s ({alive})")
        return self._conn.recv()

    def call(self, command: str, arg: Any = None, timeout: float = 60) -> Any:
        self._conn.send((command, arg))
        return self._call_reply(timeout)

    def reset(self, phase: str, target: int) -> None:
        self.call("reset", (phase, target))

    def progress(self) -> dict[str, Any]:
        return dict(self.call("progress"))

    def stats(self) -> dict[str, Any]:
        return dict(self.call("stats", timeout=120))


# --- the connector (child process) ---------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorSpec:
    kafka: KafkaConfig
    topics: TopicsConfig
    receiver_url: str
    per_request: int
    ca_bundle: Path | None
    connections_per_host: int | None
    tmp: Path
    extra_env: tuple[tuple[str, str], ...] = ()
    profile_to: Path | None = None


class Connector(_common.ConnectorProcess):
    """``siem-export run webhook`` for one ConnectorSpec (see ``_common.ConnectorProcess``)."""

    def __init__(self, spec: ConnectorSpec) -> None:
        webhook: dict[str, Any] = {
            "url": spec.receiver_url,
            "max_events_per_request": spec.per_request,
        }
        if spec.ca_bundle is not None:
            webhook["ca_bundle"] = str(spec.ca_bundle)
        env = {
            "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            "SIEM_EXPORT_WEBHOOK__ALLOW_HTTP": "true" if spec.ca_bundle is None else "false",
        }
        if spec.connections_per_host is not None:
            env["SIEM_EXPORT_WEBHOOK__MAX_CONNECTIONS_PER_HOST"] = str(spec.connections_per_host)
        env.update(spec.extra_env)
        super().__init__(
            "webhook",
            spec.kafka,
            spec.topics,
            spec.tmp,
            webhook,
            env,
            metrics_of=WEBHOOK_METRICS,
            profile_to=spec.profile_to,
        )


# --- checking what arrived -----------------------------------------------------------------------


def publish_even(kafka: KafkaConfig, topic: str, count: int, tenants: int) -> dict[str, list[str]]:
    """Synthetic events with their tenants reassigned round-robin; returns the expected order."""
    events = []
    for i, event in enumerate(EventFactory(tenants, seed=5).events(count)):
        events.append({**event, "tenant_id": f"tnt_even{i % tenants:04d}"})
    with Publisher(kafka, topic, overrides={"linger.ms": 20, "batch.size": 1_000_000}) as pub:
        for event in events:
            pub.publish(event)
        if pub.flush(120):
            raise RuntimeError("events were not delivered")
    return _common.expected_order(events)


# --- phases --------------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One connector run until the receiver held every event (times are time.time())."""

    label: str
    per_request: int
    events: int
    launched: float
    ready_at: float
    first_at: float
    done_at: float
    requests: int
    copies: int
    sizes: dict[int, int]
    arrivals: list[float]  # first-arrival times, sorted
    cpu: str
    connector_cpu: float  # the connector's CPU seconds (all threads) over the same span as cpu
    slowest_lane: str
    metrics: dict[str, float]
    check: _common.Check
    exit_code: int | None
    stop_seconds: float
    logs: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> _common.Rate:
        """The headline: from /readyz (group joined, partitions assigned) to the last event;
        like bench/engine.py's "from run()" without the interpreter's start. The poll of
        /readyz can answer after the first deliveries (the loop is busy): the earlier of the
        two starts the clock."""
        return _common.Rate(self.events, self.done_at - min(self.ready_at, self.first_at))

    @property
    def rate_from_launch(self) -> _common.Rate:
        return _common.Rate(self.events, self.done_at - self.launched)

    @property
    def rate_from_first(self) -> _common.Rate:
        """Flatters small runs: the backlog may be fetched and decoded before the first POST."""
        return _common.Rate(self.events, self.done_at - self.first_at)

    def share_time(self, share: float) -> float:
        """Seconds from the first arrival until ``share`` of the events had arrived."""
        index = min(len(self.arrivals) - 1, max(0, int(share * len(self.arrivals)) - 1))
        return self.arrivals[index] - self.first_at if self.arrivals else 0.0


def wait_for_all(
    receiver: Receiver, connector: Connector | None, deadline: float, what: str
) -> dict[str, Any]:
    while True:
        progress = receiver.progress()
        if progress["done_at"] is not None:
            return progress
        if connector is not None:
            connector.check_alive()
        if time.monotonic() > deadline:
            raise _common.BenchTimeout(
                f"{what}: the receiver has {progress['distinct']} of the events after the "
                f"time allowed"
            )
        time.sleep(0.1)


def run_delivery(
    label: str,
    spec: ConnectorSpec,
    receiver: Receiver,
    expected: dict[str, list[str]],
    time_left: Callable[[], float],
) -> Delivery:
    """A fresh consumer group from the start of the topic until the receiver has every event."""
    count = sum(len(ids) for ids in expected.values())
    receiver.reset(label, count)
    with Connector(spec) as connector:
        deadline = time.monotonic() + time_left()
        ready_at = connector.wait_ready(deadline)
        before = _common.CpuSample.take(connector.pid, receiver.pid)
        progress = wait_for_all(receiver, connector, deadline, label)
        after = _common.CpuSample.take(connector.pid, receiver.pid)
        metrics = connector.metrics()
        connector.stop()
    stats = receiver.stats()  # after the stop: copies sent while draining count too
    return Delivery(
        label=label,
        per_request=spec.per_request,
        events=count,
        launched=connector.launched,
        ready_at=ready_at,
        first_at=progress["first"],
        done_at=progress["done_at"],
        requests=progress["requests"],
        copies=progress["events"],
        sizes={int(k): v for k, v in stats["sizes"].items()},
        arrivals=sorted(stats["arrival"].values()),
        cpu=_common.describe_cpu(before, after),
        connector_cpu=after.connector - before.connector,
        slowest_lane=slowest_lane(stats, progress["first"]),
        metrics=metrics,
        check=_common.verify(expected, stats["by_tenant"]),
        exit_code=connector.exit_code,
        stop_seconds=connector.stop_seconds,
        logs=connector.log_summary(),
    )


def slowest_lane(stats: dict[str, Any], first: float) -> str:
    """The tenant whose events were complete last: a lane has one request in flight at a time,
    so a big tenant's sequential round trips can bound the whole run."""
    arrival: dict[str, float] = stats["arrival"]
    by_tenant: dict[str, list[str]] = stats["by_tenant"]
    if not by_tenant:
        return "no events"
    ends = {t: max(arrival[e] for e in ids) for t, ids in by_tenant.items()}
    tenant = max(ends, key=lambda t: ends[t])
    events = len(set(by_tenant[tenant]))
    total = sum(len(ids) for ids in by_tenant.values())
    posts = stats["tenant_requests"].get(tenant, 0)
    start = min(arrival[e] for e in by_tenant[tenant])
    per_post = (ends[tenant] - start) / max(posts - 1, 1) * 1000
    # Its longest pause (events of one POST arrive together): a lane left without events
    # (parked, waiting for a re-read) shows here, where the mean hides it.
    times = sorted({arrival[e] for e in by_tenant[tenant]})
    gap, gap_at = max(
        ((b - a, a) for a, b in zip(times, times[1:], strict=False)), default=(0.0, first)
    )
    biggest = max(by_tenant, key=lambda t: len(by_tenant[t]))
    return (
        f"last lane to finish: {tenant} ({events} events = {events / total:.1%}"
        f"{', the largest tenant' if tenant == biggest else ''}) at "
        f"{ends[tenant] - first:.2f} s, {posts} POSTs one after another, "
        f"{per_post:.1f} ms apart (longest pause {gap * 1000:.0f} ms, at {gap_at - first:.2f} s)"
    )


def paced_publish(
    pub: Publisher, events: Sequence[dict[str, Any]], rate: float
) -> tuple[dict[str, float], float]:
    """Publish at ``rate`` events/s; (event id -> time.time() of its publish call, seconds)."""
    sent: dict[str, float] = {}
    began = time.perf_counter()
    for index, event in enumerate(events):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[event["event_id"]] = time.time()
        pub.publish(event)
    return sent, time.perf_counter() - began


class KafkaProbe(threading.Thread):
    """A bare consumer in this script: when each event became consumable (the Kafka path alone).

    It blocks in ``poll`` for the first record and takes the rest with ``consume(n, 0)``, so it
    never waits for a batch to fill up.
    """

    def __init__(self, kafka: KafkaConfig, topic: str, partitions: int) -> None:
        super().__init__(name="kafka-probe", daemon=True)
        self.seen: dict[str, float] = {}
        self._stop_event = threading.Event()
        self._consumer = Consumer(tail_consumer_config(kafka) | {"enable.partition.eof": False})
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def run(self) -> None:
        codec = AuditEventCodec()
        consumer = self._consumer
        while not self._stop_event.is_set():
            first = consumer.poll(0.1)
            if first is None:
                continue
            now = time.time()
            for msg in [first, *consumer.consume(1000, timeout=0)]:
                if msg.error() is None:
                    self.seen[codec.decode(msg.value() or b"")["event_id"]] = now

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
        self._consumer.close()


def quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Latency:
    published: int
    publish_seconds: float
    latencies: list[float]  # seconds, sorted: publish call to receiver
    kafka_latencies: list[float]  # seconds, sorted: publish call to the bare consumer
    cpu: str
    check: _common.Check
    metrics: dict[str, float]
    logs: dict[str, int]


def run_latency(
    kafka: KafkaConfig,
    args: argparse.Namespace,
    receiver: Receiver,
    make_spec: Callable[[TopicsConfig, int], ConnectorSpec],
    time_left: Callable[[], float],
) -> Latency:
    topics = _common.make_topics(kafka, args.partitions, "wh-lat")
    total = int(args.latency_rate * args.latency_seconds)
    events = list(EventFactory(args.tenants, seed=3).events(WARMUP_EVENTS + total))
    warmup, measured = events[:WARMUP_EVENTS], events[WARMUP_EVENTS:]
    spec = make_spec(topics, args.latency_per_request)
    probe = KafkaProbe(kafka, topics.events, args.partitions)
    probe.start()
    try:
        with Connector(spec) as connector, Publisher(kafka, topics.events) as pub:
            deadline = time.monotonic() + time_left()
            connector.wait_ready(deadline)
            # Warm up: connections open, lanes exist, the group has fetched once.
            receiver.reset("warmup", WARMUP_EVENTS)
            paced_publish(pub, warmup, args.latency_rate)
            wait_for_all(receiver, connector, min(deadline, time.monotonic() + 60), "warm-up")
            receiver.reset("latency", total)
            before = _common.CpuSample.take(connector.pid, receiver.pid)
            sent, seconds = paced_publish(pub, measured, args.latency_rate)
            pub.flush(30)
            wait_for_all(receiver, connector, min(deadline, time.monotonic() + 60), "latency")
            after = _common.CpuSample.take(connector.pid, receiver.pid)
            metrics = connector.metrics()
            connector.stop()
    finally:
        probe.stop()
    stats = receiver.stats()
    arrival: dict[str, float] = stats["arrival"]
    return Latency(
        published=total,
        publish_seconds=seconds,
        latencies=sorted(arrival[e] - t for e, t in sent.items() if e in arrival),
        kafka_latencies=sorted(probe.seen[e] - t for e, t in sent.items() if e in probe.seen),
        cpu=_common.describe_cpu(before, after),
        check=_common.verify(_common.expected_order(measured), stats["by_tenant"]),
        metrics=metrics,
        logs=connector.log_summary(),
    )


_AREAS = (  # (substring of the file or built-in name, area); first match wins
    ("/aiohttp/", "aiohttp client (+ yarl, multidict)"),
    ("/yarl/", "aiohttp client (+ yarl, multidict)"),
    ("/multidict/", "aiohttp client (+ yarl, multidict)"),
    ("/propcache/", "aiohttp client (+ yarl, multidict)"),
    ("/connectors/webhook/", "webhook sink, transport, encoder, SSRF guard"),
    ("/streams/engine/", "delivery engine (dispatch, lanes, commits)"),
    ("/streams/", "Avro decode, event JSON (streams)"),
    ("orjson", "Avro decode, event JSON (streams)"),
    ("/prometheus_client/", "prometheus metrics"),
    ("/asyncio/", "asyncio event loop (+ epoll)"),
    ("epoll", "asyncio event loop (+ epoll)"),
    ("_socket", "socket send/recv (kernel)"),
    ("cimpl", "confluent-kafka calls on the loop"),
)


def profile_by_area(path: Path) -> list[tuple[str, float, float]]:
    """(area, seconds, share) of the profiled thread's own time, largest first."""
    stats: Any = pstats.Stats(str(path))
    areas: Counter[str] = Counter()
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        where = f"{filename} {name}"
        area = next((a for key, a in _AREAS if key in where), None)
        if area is None:
            area = "other built-ins" if filename == "~" else "other Python"
        areas[area] += tottime
    total = sum(areas.values()) or 1.0
    return [(area, seconds, seconds / total) for area, seconds in areas.most_common()]


# --- report --------------------------------------------------------------------------------------


def describe_delivery(run: Delivery, ceiling: _common.Rate) -> list[str]:
    mean_size = run.copies / max(run.requests, 1)
    top_sizes = ", ".join(f"{n}: {c}" for n, c in sorted(run.sizes.items())[-3:])
    lines = [
        f"  from /readyz (partitions):  {run.rate}  = {_common.ratio(run.rate, ceiling)} ceiling",
        f"  from first event received:  {run.rate_from_first}  "
        f"= {_common.ratio(run.rate_from_first, ceiling)} ceiling",
        f"  from process launch:        {run.rate_from_launch}  "
        f"= {_common.ratio(run.rate_from_launch, ceiling)} ceiling (launch to ready "
        f"{run.ready_at - run.launched:.2f} s, ready to first event "
        f"{run.first_at - run.ready_at:.2f} s)",
        f"  arrivals: 50% after {run.share_time(0.5):.2f} s, 90% after "
        f"{run.share_time(0.9):.2f} s, 99% after {run.share_time(0.99):.2f} s, all after "
        f"{run.share_time(1.0):.2f} s (from the first)",
        f"  {run.requests} POSTs, {mean_size:.1f} events per POST on average "
        f"(largest sizes, size: POSTs: {top_sizes})",
        f"  {run.cpu}",
        f"  {cpu_per_event(run, ceiling)}",
        f"  {run.slowest_lane}",
        f"  check: {run.check}",
        f"  connector stopped (SIGTERM) in {run.stop_seconds:.2f} s, exit code {run.exit_code}",
    ]
    if run.metrics:
        lines.append(
            "  connector metrics: "
            + ", ".join(_common.describe_metrics(run.metrics, WEBHOOK_MEANS))
        )
    if run.logs:
        lines.append(f"  connector log lines: {run.logs}")
    return lines


def _cpu_us(rate: _common.Rate) -> float:
    return (rate.cpu_seconds or 0.0) / max(rate.events, 1) * 1e6


def cpu_per_event(run: Delivery, ceiling: _common.Rate) -> str:
    """CPU per event of the connector next to the ceiling's: steadier than rates when other
    processes take the cores, since neither figure counts time spent waiting for a core."""
    connector = run.connector_cpu / max(run.events, 1) * 1e6
    if ceiling.cpu_seconds is None:
        return f"CPU per event: connector {connector:.1f} us"
    ceiling_us = ceiling.cpu_seconds / max(ceiling.events, 1) * 1e6
    return (
        f"CPU per event: connector {connector:.1f} us, ceiling {ceiling_us:.1f} us "
        f"(ceiling/connector = {ceiling_us / max(connector, 1e-9):.2f}x)"
    )


def target(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument(
        "--latency-per-request",
        type=int,
        default=1,
        help="max_events_per_request of the latency phase (default 1, the setting's default)",
    )
    parser.add_argument(
        "--phases",
        type=lambda text: set(text.split(",")),
        default={"single", "even", "batched", "latency"},
        help="comma-separated subset of single,even,batched,latency (default: all)",
    )
    parser.add_argument(
        "--connections-per-host",
        type=int,
        default=None,
        help="SIEM_EXPORT_WEBHOOK__MAX_CONNECTIONS_PER_HOST (default: the setting's default)",
    )
    _common.add_connector_env(parser, "SIEM_EXPORT_ENGINE__FETCH_BATCH=500")
    parser.add_argument("--https", action="store_true", help="receiver on https (trustme cert)")
    parser.add_argument("--profile", action="store_true", help="extra cProfiled 1-per-POST pass")
    parser.add_argument("--bootstrap", default=None, help="use this cluster instead of a new one")
    args = parser.parse_args()
    _common.note_small_count(args.count)

    _common.run_bounded(
        lambda time_left, summary: _main(args, time_left, summary),
        f"{_common.cpu_count()} cores shared by broker, connector, receiver and this "
        "script: figures are noisy",
    )


def _main(args: argparse.Namespace, time_left: Callable[[], float], summary: list[str]) -> None:
    settings = WebhookSettings()
    per_host = args.connections_per_host or settings.max_connections_per_host
    engine = EngineConfig()
    print(
        f"machine: {platform.python_implementation()} {platform.python_version()}, "
        f"{_common.cpu_count()} cores, shared by the Kafka broker (JVM), the connector process, "
        "the receiver process and this script: the receiver's CPU is CPU the connector does not "
        "get (figures are noisy)",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="siem-bench-wh-")))
        tls_files: tuple[str, str] | None = None
        ca_bundle: Path | None = None
        if args.https:
            tls_files, ca_bundle = _common.make_tls(tmp)
        kafka = stack.enter_context(_common.broker(args.bootstrap))
        receiver = stack.enter_context(Receiver(tls_files))
        scheme = "https" if args.https else "http"
        url = f"{scheme}://127.0.0.1:{receiver.port}/in"
        print(
            f"receiver: aiohttp in its own process at {url} ("
            + ("TLS, trustme certificate" if args.https else "plain http, allow_http")
            + "), answers 204"
        )
        print(
            f"connector: `python -m connectors run webhook` child process, settings from "
            f"SIEM_EXPORT_* and a destinations file; max_connections_per_host {per_host}, "
            f"max_concurrent_sends {engine.max_concurrent_sends}, ops endpoints on a free port",
            flush=True,
        )

        extra_env: tuple[tuple[str, str], ...] = tuple(args.connector_env)
        if extra_env:
            print("connector settings added: " + " ".join(f"{k}={v}" for k, v in extra_env))

        def make_spec(topics: TopicsConfig, per_request: int) -> ConnectorSpec:
            return ConnectorSpec(
                kafka,
                topics,
                url,
                per_request,
                ca_bundle,
                args.connections_per_host,
                tmp,
                extra_env,
            )

        # (1) publish, (2) ceiling
        topics = _common.make_topics(kafka, args.partitions, "wh-tput")
        produced = _common.publish(kafka, topics.events, args.count, args.tenants)
        expected = _common.expected_order(
            list(EventFactory(args.tenants, seed=1).events(args.count))
        )
        biggest = max(len(ids) for ids in expected.values())
        print(
            f"\n[1] publish: {args.count} events, {len(expected)} tenants (largest "
            f"{biggest} events = {biggest / args.count:.1%}), {args.partitions} partitions"
        )
        print(f"  publish (validate + encode + produce):  {produced}", flush=True)
        ceiling = _common.ceiling(kafka, topics.events, args.count)
        _common.warm_group_coordinator(kafka, topics.events)
        print(
            f"\n[2] ceiling (consume + decode + JSON):   {ceiling} "
            f"({_cpu_us(ceiling):.1f} us CPU per event)",
            flush=True,
        )
        summary.append(
            f"ceiling (first pass) {ceiling.per_second:,.0f} events/s; receiver {scheme}; each "
            "phase against the ceiling passes before and after it"
        )

        even_topics: TopicsConfig | None = None
        even_expected: dict[str, list[str]] = {}
        if "even" in args.phases:
            even_topics = _common.make_topics(kafka, args.partitions, "wh-even")
            even_expected = publish_even(kafka, even_topics.events, args.count, args.tenants)

        checks: list[_common.Check] = []
        # (3) one event per POST, (3b) the same with even tenants, (4) batches of 100
        for number, per_request, phase in (
            ("3", 1, "single"),
            ("3b", 1, "even"),
            ("4", BATCHED, "batched"),
        ):
            if phase not in args.phases:
                continue
            even = phase == "even"
            print(
                f"\n[{number}] max_events_per_request: {per_request}, fresh consumer group, "
                f"until the receiver has all {args.count} events"
                + (f" (tenants even: {args.count // args.tenants} events each)" if even else ""),
                flush=True,
            )
            run = run_delivery(
                f"per-request-{per_request}{'-even' if even else ''}",
                make_spec(even_topics if even and even_topics else topics, per_request),
                receiver,
                even_expected if even else expected,
                time_left,
            )
            checks.append(run.check)
            after = _common.ceiling(kafka, topics.events, args.count)
            reference = _common.pooled(ceiling, after)
            print(
                f"  ceiling before {ceiling.per_second:,.0f}/s "
                f"({_cpu_us(ceiling):.1f} us CPU per event), after {after.per_second:,.0f}/s "
                f"({_cpu_us(after):.1f} us); both together, this phase's reference: "
                f"{reference.per_second:,.0f}/s ({_cpu_us(reference):.1f} us)",
                flush=True,
            )
            ceiling = after
            for line in describe_delivery(run, reference):
                print(line, flush=True)
            if per_request == 1:
                goal = f"target >= 5,000/s: {target(run.rate.per_second >= 5000)}"
            else:
                goal = (
                    f"target >= 0.60x: {target(run.rate.per_second >= 0.6 * reference.per_second)}"
                )
            summary.append(
                f"{per_request} event(s) per POST{' (even tenants)' if even else ''}: "
                f"{run.rate.per_second:,.0f} events/s from "
                f"/readyz = "
                f"{_common.ratio(run.rate, reference)} ceiling (from launch "
                f"{run.rate_from_launch.per_second:,.0f}/s = "
                f"{_common.ratio(run.rate_from_launch, reference)}); {goal}; "
                f"{cpu_per_event(run, reference)}"
            )

        for per_request in (1, BATCHED) if args.profile else ():
            profile_to = tmp / f"connector-{per_request}.prof"
            spec = replace(make_spec(topics, per_request), profile_to=profile_to)
            print(
                f"\n[p] extra pass, max_events_per_request {per_request}, connector under cProfile",
                flush=True,
            )
            run = run_delivery(f"profile-{per_request}", spec, receiver, expected, time_left)
            print(f"  (slowed by the profiler) {run.rate}; check: {run.check}")
            print(f"  {run.cpu}")
            print("  loop-thread time by area (tottime; the consumer thread is not profiled):")
            for area, seconds, share in profile_by_area(profile_to):
                print(f"    {area:<52} {seconds:6.2f} s  {share:5.1%}")
            out = io.StringIO()
            stats = pstats.Stats(str(profile_to), stream=out).strip_dirs()
            stats.sort_stats("tottime").print_stats(15)
            print("\n".join(out.getvalue().strip().splitlines()[4:]))

        # (5) latency
        if "latency" in args.phases:
            print(
                f"\n[5] latency: fresh topic and group, max_events_per_request "
                f"{args.latency_per_request}, {args.latency_rate:,.0f} events/s for "
                f"{args.latency_seconds:g} s after {WARMUP_EVENTS} warm-up events; publisher "
                f"defaults (linger.ms {producer_config(kafka)['linger.ms']}, acks=all); "
                "publish-call time to receive time",
                flush=True,
            )
            lat = run_latency(kafka, args, receiver, make_spec, time_left)
            checks.append(lat.check)
            achieved = lat.published / max(lat.publish_seconds, 1e-9)
            ms = {q: quantile(lat.latencies, q) * 1000 for q in (0.5, 0.99, 1.0)}
            kafka_ms = {q: quantile(lat.kafka_latencies, q) * 1000 for q in (0.5, 0.99, 1.0)}
            print(
                f"  published {lat.published} events in {lat.publish_seconds:.2f} s "
                f"({achieved:,.0f}/s)"
            )
            print(
                f"  produce -> receiver (through the connector): p50 {ms[0.5]:.1f} ms, "
                f"p99 {ms[0.99]:.1f} ms, max {ms[1.0]:.1f} ms ({len(lat.latencies)} events)"
            )
            print(
                f"  produce -> bare consumer in this script (Kafka path alone, same events): "
                f"p50 {kafka_ms[0.5]:.1f} ms, p99 {kafka_ms[0.99]:.1f} ms, max "
                f"{kafka_ms[1.0]:.1f} ms ({len(lat.kafka_latencies)} events)"
            )
            print(f"  {lat.cpu}")
            print(f"  check: {lat.check}")
            if lat.metrics:
                print(
                    "  connector metrics: "
                    + ", ".join(_common.describe_metrics(lat.metrics, WEBHOOK_MEANS))
                )
            if lat.logs:
                print(f"  connector log lines: {lat.logs}")
            summary.append(
                f"latency at {achieved:,.0f} events/s ({args.latency_per_request} per POST at "
                f"most): p50 {ms[0.5]:.1f} ms, p99 {ms[0.99]:.1f} ms, max {ms[1.0]:.1f} ms; Kafka "
                f"path alone p50 {kafka_ms[0.5]:.1f} ms, p99 {kafka_ms[0.99]:.1f} ms"
            )
        summary.append(
            "delivery checks: "
            + (
                "all complete, in order per tenant"
                if all(c.ok for c in checks)
                else "PROBLEMS: " + "; ".join(str(c) for c in checks if not c.ok)
            )
            + f"; duplicates {sum(c.duplicates for c in checks)}"
        )


if __name__ == "__main__":
    main()
