"""SyslogSink against small in-process collectors on 127.0.0.1 (TCP, TLS via trustme, UDP).

The collectors are asyncio servers written here: a stream collector whose n-th connection
reads everything, never reads, or resets after a first chunk, and a datagram collector that
keeps every datagram. What they received is checked with the strict RFC 5424 reader of
``tests.syslog_support`` (independent of the encoder). Real rsyslog is in
``tests/integration/test_syslog.py``; RELP is left to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from prometheus_client import CollectorRegistry

from connectors.destinations import Destinations, load_destinations
from connectors.health import DestinationHealth, HealthThresholds
from connectors.syslog import sink as sink_module
from connectors.syslog.config import SyslogSettings
from connectors.syslog.encoder import encode
from connectors.syslog.sink import SyslogSink
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError
from tests.process_support import free_port
from tests.syslog_support import (
    Parsed,
    SyntaxProblem,
    adversarial_event,
    envelope,
    parse_5424,
    split_lf,
    split_octet_counted,
    synthetic_envelopes,
)

pytestmark = pytest.mark.component

TENANT = "tnt_syslog01"
OTHER = "tnt_syslog02"
HOST = "127.0.0.1"
WAIT = 5.0
"""Longest wait for anything the network should do at once (bounded tests)."""
SETTINGS = SyslogSettings(
    confirm_seconds=0.3, connect_timeout_seconds=3.0, write_timeout_seconds=3.0
)
FORMAT = SETTINGS.message_format()

Mode = Literal["read", "hold", "reset"]


# --- events ---------------------------------------------------------------------------------


def lane(
    tenant: str, count: int, first: int = 0, *, metadata: Mapping[str, Any] | None = None
) -> list[Envelope]:
    """``count`` distinct events of ``tenant`` at offsets ``first``.. of partition 0."""
    out: list[Envelope] = []
    for offset, env in enumerate(synthetic_envelopes(first + count)[first:], start=first):
        event: dict[str, Any] = {**env.event, "tenant_id": tenant}
        if metadata is not None:
            event["metadata"] = dict(metadata)
        out.append(dataclasses.replace(envelope(event), offset=offset))
    return out


def padded(tenant: str, offset: int, pad: int) -> Envelope:
    """One event of ``tenant`` whose metadata makes it ``pad`` bytes larger."""
    [env] = lane(tenant, 1, offset, metadata={"pad": "x" * pad})
    return env


def ids(batch: Sequence[Envelope]) -> list[str]:
    return [env.event["event_id"] for env in batch]


def msgs(parsed: Sequence[Parsed]) -> list[bytes]:
    return [p.msg for p in parsed]


def jsons(batch: Sequence[Envelope]) -> list[bytes]:
    return [env.json for env in batch]


def octet_counted(stream: bytes) -> list[Parsed]:
    """Every message of an octet-counted stream, strictly parsed."""
    return [parse_5424(frame) for frame in split_octet_counted(stream)]


def holds_frames(stream: bytes, count: int) -> bool:
    try:
        return len(split_octet_counted(stream)) >= count
    except SyntaxProblem:
        return False  # a frame is still on its way


# --- collectors -----------------------------------------------------------------------------


async def until(predicate: Callable[[], bool], changed: asyncio.Event, what: str) -> None:
    """Wait (bounded) until ``predicate`` holds; ``changed`` is set whenever it may have."""
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"not within {WAIT:g} s: {what}") from None


class StreamCollector:
    """A TCP (or, with ``tls``, TLS) collector recording the bytes of each connection.

    ``modes[n]`` is what the n-th connection does (the last one repeats): ``read`` reads
    everything; ``hold`` never reads; ``reset`` reads a first chunk, then resets the
    connection (SO_LINGER 0) with the rest unread.
    """

    def __init__(
        self, modes: Sequence[Mode] = ("read",), tls: ssl.SSLContext | None = None, port: int = 0
    ) -> None:
        self.modes = list(modes)
        self.tls = tls
        self.port = port
        self.connections: list[bytearray] = []
        self.changed = asyncio.Event()
        self._release = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> StreamCollector:
        self._server = await asyncio.start_server(self._serve, HOST, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._release.set()
        for writer in self._writers:
            writer.transport.abort()
        # Aborted connections end every handler; cancelling one would make asyncio log an
        # "unhandled exception in client_connected_cb", so that is only the last resort.
        if self._handlers:
            _, stuck = await asyncio.wait(self._handlers, timeout=WAIT)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def stream(self, number: int = 0) -> bytes:
        return bytes(self.connections[number])

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        await until(predicate, self.changed, what)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(writer)
        data = bytearray()
        self.connections.append(data)
        mode = self.modes[min(len(self.connections) - 1, len(self.modes) - 1)]
        self.changed.set()
        try:
            if mode == "hold":
                transport = writer.transport
                assert isinstance(transport, asyncio.ReadTransport)
                transport.pause_reading()  # leave everything in the kernel's buffers
                await self._release.wait()
            elif mode == "reset":
                data += await reader.read(100)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                while chunk := await reader.read(65536):
                    data += chunk
                    self.changed.set()
        except (OSError, ssl.SSLError):
            pass  # the sink went away; what arrived is recorded
        finally:
            self.changed.set()
            writer.transport.abort()
            self._handlers.discard(task)


class _DatagramCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.changed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.datagrams.append(data)
        self.changed.set()


@dataclass
class UdpCollector:
    """A UDP collector keeping every datagram."""

    transport: asyncio.DatagramTransport
    protocol: _DatagramCollector
    port: int

    @property
    def datagrams(self) -> list[bytes]:
        return self.protocol.datagrams

    async def wait_for(self, count: int) -> None:
        await until(
            lambda: len(self.datagrams) >= count, self.protocol.changed, f"{count} datagrams"
        )


def free_udp_port() -> int:
    """A loopback UDP port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ca(ca, tmp_path_factory.mktemp("tls") / "ca.pem")


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", HOST).configure_cert(context)
    return context


ServeFn = Callable[..., Awaitable[StreamCollector]]
ServeUdpFn = Callable[..., Awaitable[UdpCollector]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFn]:
    """``await serve(modes, tls=…, port=…)``: a started StreamCollector, stopped at teardown."""
    started: list[StreamCollector] = []

    async def start(
        modes: Sequence[Mode] = ("read",), *, tls: ssl.SSLContext | None = None, port: int = 0
    ) -> StreamCollector:
        collector = await StreamCollector(modes, tls, port).start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        await collector.stop()


@pytest.fixture
async def serve_udp() -> AsyncIterator[ServeUdpFn]:
    """``await serve_udp(port=…)``: a UdpCollector, closed at teardown."""
    started: list[asyncio.DatagramTransport] = []

    async def start(port: int = 0) -> UdpCollector:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            _DatagramCollector, local_addr=(HOST, port)
        )
        started.append(transport)
        return UdpCollector(transport, protocol, transport.get_extra_info("sockname")[1])

    yield start
    for transport in started:
        transport.close()


class FakeClock:
    """Wall clock of DestinationHealth, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    sink: SyslogSink
    dests: Destinations
    registry: CollectorRegistry
    alerts: list[tuple[str, bytes]]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(record) for _, record in self.alerts]

    def states(self) -> list[str]:
        return [record["state"] for record in self.records()]

    async def send(self, tenant: str, batch: Sequence[Envelope]) -> SendResult | None:
        """``sink.send``, bounded: a send that hangs fails the test instead."""
        async with asyncio.timeout(WAIT):
            return await self.sink.send(tenant, batch)

    async def fail(self, tenant: str, batch: Sequence[Envelope]) -> SinkError:
        with pytest.raises(SinkError) as info:
            await self.send(tenant, batch)
        return info.value


def syslog(port: int, transport: str = "tcp", **options: Any) -> dict[str, Any]:
    """A tenant entry of the destinations file: a collector on 127.0.0.1:``port``."""
    return {"syslog": {"host": HOST, "port": port, "transport": transport, **options}}


DestsFn = Callable[[Mapping[str, Any]], Destinations]
RigFn = Callable[..., Rig]


@pytest.fixture
def write_dests(tmp_path: Path) -> DestsFn:
    written: list[Path] = []

    def write(tenants: Mapping[str, Any]) -> Destinations:
        path = tmp_path / f"destinations-{len(written)}.json"
        written.append(path)
        path.write_text(json.dumps({"tenants": tenants}, default=str))  # JSON is YAML
        return load_destinations(path)

    return write


@pytest.fixture
async def make_rig(
    serve: ServeFn, serve_udp: ServeUdpFn, write_dests: DestsFn
) -> AsyncIterator[RigFn]:
    """``make_rig(tenants, settings, clock=…)``: a sink (closed before the collectors stop)."""
    sinks: list[SyslogSink] = []

    def make(
        tenants: Mapping[str, Any],
        settings: SyslogSettings = SETTINGS,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Rig:
        registry = CollectorRegistry()
        alerts: list[tuple[str, bytes]] = []
        health = DestinationHealth(
            "syslog",
            settings.health,
            lambda tenant, record: alerts.append((tenant, record)),
            registry=registry,
            clock=clock,
        )
        dests = write_dests(tenants)
        sink = SyslogSink(settings, dests, health, registry=registry)
        sinks.append(sink)
        return Rig(sink, dests, registry, alerts)

    yield make
    for sink in sinks:
        await sink.close()


async def confirmed(result: SendResult | None) -> None:
    """The batch went into custody and its confirmation arrives (bounded)."""
    assert result is not None
    assert result.pending is not None
    assert not result.rejected
    assert result.settled is None
    async with asyncio.timeout(WAIT):
        await result.pending
    assert result.pending.result() is None


async def custody_fails(result: SendResult | None) -> SinkError:
    assert result is not None
    assert result.pending is not None
    with pytest.raises(SinkError) as info:
        async with asyncio.timeout(WAIT):
            await result.pending
    return info.value


# --- TCP: delayed confirmation --------------------------------------------------------------


async def test_tcp_batch_is_confirmed_confirm_seconds_after_the_collector_took_it(
    make_rig: RigFn, serve: ServeFn
) -> None:
    collector = await serve()
    rig = make_rig({"*": syslog(collector.port)})
    batch = lane(TENANT, 10)
    started = time.monotonic()
    result = await rig.send(TENANT, batch)
    assert result is not None
    assert result.pending is not None
    assert not result.pending.done()  # written is not delivered
    await confirmed(result)
    assert time.monotonic() - started >= SETTINGS.confirm_seconds
    await collector.wait_for(lambda: holds_frames(collector.stream(), 10), "10 frames")
    assert len(collector.connections) == 1
    parsed = octet_counted(collector.stream())  # exactly the frames, nothing left over
    assert msgs(parsed) == jsons(batch)
    assert [p.params["event_id"] for p in parsed] == ids(batch)
    assert {p.params["tenant_id"] for p in parsed} == {TENANT}
    assert rig.metric("siem_export_syslog_messages_total", transport="tcp") == 10
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="ok") == 1
    assert rig.alerts == []


async def test_tcp_reset_before_confirmation_fails_the_batch_and_the_next_send_reconnects(
    make_rig: RigFn, serve: ServeFn
) -> None:
    collector = await serve(["reset", "read"])
    port = collector.port
    rig = make_rig({"*": syslog(port)}, SETTINGS.model_copy(update={"confirm_seconds": 1.0}))
    batch = lane(TENANT, 10)
    started = time.monotonic()
    error = await custody_fails(await rig.send(TENANT, batch))
    assert time.monotonic() - started < 1.0  # failed within confirm_seconds, not confirmed
    assert error.retriable
    assert f"tcp://{HOST}:{port}" in str(error)
    assert 0 < len(collector.stream(0)) <= 100

    await confirmed(await rig.send(TENANT, batch))  # the engine sends it again
    assert len(collector.connections) == 2  # on a new connection
    await collector.wait_for(lambda: holds_frames(collector.stream(1), 10), "10 frames")
    assert msgs(octet_counted(collector.stream(1))) == jsons(batch)
    assert rig.metric("siem_export_syslog_connections_lost_total", transport="tcp") == 1
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="ok") == 2


async def test_a_batch_after_a_failed_custody_batch_is_refused_until_that_one_is_resent(
    make_rig: RigFn, serve: ServeFn
) -> None:
    collector = await serve(["reset", "read"])
    rig = make_rig({"*": syslog(collector.port)})
    a, b = lane(TENANT, 10, 0), lane(TENANT, 10, 10)
    await custody_fails(await rig.send(TENANT, a))

    error = await rig.fail(TENANT, b)  # B would overtake A's second copy
    assert error.retriable
    assert "earlier batch" in str(error)

    result_a = await rig.send(TENANT, a)
    result_b = await rig.send(TENANT, b)
    await confirmed(result_a)
    await confirmed(result_b)
    await collector.wait_for(lambda: holds_frames(collector.stream(1), 20), "20 frames")
    # B only once, after A: it was not written when it was refused.
    assert msgs(octet_counted(collector.stream(1))) == jsons(a + b)
    assert len(collector.connections) == 2


async def test_write_timeout_when_the_collector_takes_no_data(
    make_rig: RigFn, serve: ServeFn
) -> None:
    collector = await serve(["hold"])
    settings = SETTINGS.model_copy(update={"write_timeout_seconds": 0.5})
    rig = make_rig({"*": syslog(collector.port)}, settings)
    big = [padded(TENANT, offset, 100_000) for offset in range(160)]  # ~16 MB
    started = time.monotonic()
    error = await rig.fail(TENANT, big)
    assert time.monotonic() - started < WAIT
    assert error.retriable
    assert f"tcp://{HOST}:{collector.port}" in str(error)
    assert "took no data for 0.5 s" in str(error)

    # The link was lost: the next batch goes over a new connection.
    result = await rig.send(TENANT, lane(TENANT, 1))
    assert result is not None
    assert result.pending is not None
    await collector.wait_for(lambda: len(collector.connections) == 2, "a second connection")
    assert rig.metric("siem_export_syslog_connections_lost_total", transport="tcp") == 1


async def test_connect_refused_then_other_tenants_of_the_collector_fail_without_connecting(
    make_rig: RigFn,
) -> None:
    port = free_port()
    rig = make_rig({"*": syslog(port)})
    first = await rig.fail(TENANT, lane(TENANT, 1))
    assert first.retriable
    assert f"tcp://{HOST}:{port}" in str(first)
    assert "cannot connect" in str(first)
    started = time.monotonic()
    second = await rig.fail(OTHER, lane(OTHER, 1))
    assert time.monotonic() - started < 0.5  # at once, inside the 1 s backoff
    assert second.retriable
    assert str(second) == str(first)
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="failed") == 1
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="ok") is None


# --- TLS ------------------------------------------------------------------------------------


async def test_tls_verified_with_the_ca_bundle_and_confirmed(
    make_rig: RigFn, serve: ServeFn, server_tls: ssl.SSLContext, ca_bundle: Path
) -> None:
    collector = await serve(tls=server_tls)
    rig = make_rig({"*": syslog(collector.port, "tls", ca_bundle=ca_bundle)})
    batch = lane(TENANT, 10)
    result = await rig.send(TENANT, batch)
    assert result is not None
    assert result.pending is not None
    assert not result.pending.done()
    await confirmed(result)
    await collector.wait_for(lambda: holds_frames(collector.stream(), 10), "10 frames")
    assert msgs(octet_counted(collector.stream())) == jsons(batch)
    assert rig.metric("siem_export_syslog_messages_total", transport="tls") == 10


async def test_tls_with_a_client_certificate_for_a_collector_that_requires_one(
    make_rig: RigFn, serve: ServeFn, ca: trustme.CA, ca_bundle: Path, tmp_path: Path
) -> None:
    mutual = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", HOST).configure_cert(mutual)
    mutual.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(mutual)
    collector = await serve(tls=mutual)
    client = tmp_path / "client.pem"
    ca.issue_cert("exporter.test").private_key_and_cert_chain_pem.write_to_path(str(client))
    rig = make_rig(
        {
            "*": syslog(
                collector.port, "tls", ca_bundle=ca_bundle, client_cert=client, client_key=client
            )
        }
    )
    batch = lane(TENANT, 5)
    await confirmed(await rig.send(TENANT, batch))
    await collector.wait_for(lambda: holds_frames(collector.stream(), 5), "5 frames")
    assert msgs(octet_counted(collector.stream())) == jsons(batch)
    # Without the certificate the collector refuses us (under TLS 1.3 after our side of the
    # handshake: the write, or the batch's confirmation, fails): never confirmed.
    bare = make_rig({"*": syslog(collector.port, "tls", ca_bundle=ca_bundle)})
    with pytest.raises(SinkError, match=f"tls://{HOST}:{collector.port}"):
        result = await bare.send(TENANT, lane(TENANT, 1, 5))
        assert result is not None and result.pending is not None
        await asyncio.wait_for(result.pending, 5)


async def test_tls_with_another_ca_fails_certificate_verification(
    make_rig: RigFn, serve: ServeFn, server_tls: ssl.SSLContext, tmp_path: Path
) -> None:
    collector = await serve(tls=server_tls)
    other_ca = write_ca(trustme.CA(), tmp_path / "other-ca.pem")
    rig = make_rig({"*": syslog(collector.port, "tls", ca_bundle=other_ca)})
    error = await rig.fail(TENANT, lane(TENANT, 1))
    assert error.retriable
    assert f"tls://{HOST}:{collector.port}" in str(error)
    assert "certificate verification failed" in str(error)
    assert collector.connections == []  # the handshake never completed


async def test_tls_server_name_mismatch_fails_certificate_verification(
    make_rig: RigFn, serve: ServeFn, server_tls: ssl.SSLContext, ca_bundle: Path
) -> None:
    collector = await serve(tls=server_tls)
    entry = syslog(collector.port, "tls", ca_bundle=ca_bundle, server_name="wrong.example")
    rig = make_rig({"*": entry})
    error = await rig.fail(TENANT, lane(TENANT, 1))
    assert error.retriable
    assert "certificate verification failed" in str(error)
    assert "wrong.example" in str(error)
    assert collector.connections == []


async def test_tls_material_missing_is_misconfigured_and_alerts_at_once(
    make_rig: RigFn, serve: ServeFn, server_tls: ssl.SSLContext, ca: trustme.CA, tmp_path: Path
) -> None:
    collector = await serve(tls=server_tls)
    endpoint = f"tls://{HOST}:{collector.port}"
    missing = tmp_path / "no-such-ca.pem"
    rig = make_rig({"*": syslog(collector.port, "tls", ca_bundle=missing)})
    error = await rig.fail(TENANT, lane(TENANT, 1))
    assert not error.retriable
    assert f"TLS material of {endpoint} cannot be loaded" in str(error)
    assert rig.sink.health.state(TENANT, endpoint) == "failing"
    [record] = rig.records()  # after one failure: misconfiguration alerts at once
    assert record["tenant_id"] == TENANT
    assert record["method"] == "syslog"
    assert record["endpoint"] == endpoint
    assert record["state"] == "failing"
    assert "cannot be loaded" in record["reason"]
    assert rig.metric("siem_export_syslog_connects_total", transport="tls", result="ok") is None
    # Once the file is there, the next attempt loads it: no restart or file edit needed.
    write_ca(ca, missing)
    await confirmed(await rig.send(TENANT, lane(TENANT, 1, 1)))
    assert rig.sink.health.state(TENANT, endpoint) == "healthy"


# --- LF framing -----------------------------------------------------------------------------


async def test_lf_framing_sends_one_line_per_event(make_rig: RigFn, serve: ServeFn) -> None:
    collector = await serve()
    rig = make_rig({"*": syslog(collector.port, framing="lf")})
    hostile: dict[str, Any] = {**adversarial_event(), "tenant_id": TENANT}
    # An event that bypassed validation, with a raw LF in a value the JSON does not carry.
    [plain] = lane(TENANT, 1, 1)
    raw_lf: dict[str, Any] = {**plain.event, "event_id": "evt_line\nbreak\r"}
    unchecked = dataclasses.replace(envelope(raw_lf, validate=False), offset=1)
    batch = [envelope(hostile), unchecked, *lane(TENANT, 8, 2)]
    await confirmed(await rig.send(TENANT, batch))
    await collector.wait_for(lambda: collector.stream().count(b"\n") >= 10, "10 lines")
    stream = collector.stream()
    assert stream.endswith(b"\n")
    lines = split_lf(stream)
    assert len(lines) == 10  # no LF inside a message
    assert not [line for line in lines if b"\r" in line]
    parsed = [parse_5424(line) for line in lines]
    assert msgs(parsed) == jsons(batch)
    assert json.loads(parsed[0].msg)["metadata"]["note"] == "line one\nline two\r\nline three\rend"
    assert parsed[1].params["event_id"] == "evt_line\\nbreak\\r"  # escaped, not split


# --- UDP ------------------------------------------------------------------------------------


async def test_udp_sends_one_message_per_datagram_acknowledged_when_sent(
    make_rig: RigFn, serve_udp: ServeUdpFn
) -> None:
    collector = await serve_udp()
    rig = make_rig({"*": syslog(collector.port, "udp")})
    batch = lane(TENANT, 5)
    assert await rig.send(TENANT, batch) is None
    await collector.wait_for(5)
    parsed = [parse_5424(datagram) for datagram in collector.datagrams]
    assert msgs(parsed) == jsons(batch)  # each datagram is exactly one message
    assert rig.metric("siem_export_syslog_messages_total", transport="udp") == 5
    assert rig.metric("siem_export_syslog_oversize_messages_total") == 0


async def test_udp_oversize_is_dead_lettered_by_default(
    make_rig: RigFn, serve_udp: ServeUdpFn
) -> None:
    collector = await serve_udp()
    rig = make_rig({"*": syslog(collector.port, "udp", max_datagram_bytes=1024)})
    batch = lane(TENANT, 4)
    batch[2] = padded(TENANT, 2, 1000)
    size = len(encode(batch[2], FORMAT))
    assert size > 1024
    assert all(len(encode(env, FORMAT)) <= 1024 for i, env in enumerate(batch) if i != 2)
    result = await rig.send(TENANT, batch)
    assert result is not None
    assert list(result.rejected) == [2]
    assert f"{size} bytes" in result.rejected[2]
    assert "max_datagram_bytes 1024" in result.rejected[2]
    assert result.pending is None
    assert result.settled is None
    await collector.wait_for(3)
    assert [parse_5424(d).msg for d in collector.datagrams] == jsons([batch[0], batch[1], batch[3]])
    assert rig.metric("siem_export_syslog_oversize_messages_total") == 1
    assert rig.alerts == []


async def test_udp_oversize_pause_on_the_first_event_is_misconfigured(
    make_rig: RigFn, serve_udp: ServeUdpFn
) -> None:
    collector = await serve_udp()
    entry = syslog(collector.port, "udp", max_datagram_bytes=1024, oversize="pause")
    rig = make_rig({"*": entry})
    batch = [padded(TENANT, 0, 1000), *lane(TENANT, 2, 1)]
    error = await rig.fail(TENANT, batch)
    assert not error.retriable
    assert "max_datagram_bytes 1024" in str(error)
    assert "offset 0" in str(error)
    assert rig.states() == ["failing"]
    assert rig.metric("siem_export_syslog_oversize_messages_total") == 1
    # Nothing of that batch went out: the next datagram the collector sees is this one.
    after = lane(TENANT, 1, 5)
    assert await rig.send(TENANT, after) is None
    await collector.wait_for(1)
    assert [parse_5424(d).msg for d in collector.datagrams] == jsons(after)


async def test_udp_oversize_pause_later_in_the_batch_settles_what_precedes_it(
    make_rig: RigFn, serve_udp: ServeUdpFn
) -> None:
    collector = await serve_udp()
    entry = syslog(collector.port, "udp", max_datagram_bytes=1024, oversize="pause")
    rig = make_rig({"*": entry})
    batch = lane(TENANT, 5)
    batch[3] = padded(TENANT, 3, 1000)
    assert await rig.send(TENANT, batch) == SendResult(settled=3)
    await collector.wait_for(3)
    assert [parse_5424(d).msg for d in collector.datagrams] == jsons(batch[:3])
    assert rig.metric("siem_export_syslog_messages_total", transport="udp") == 3
    assert rig.alerts == []


async def test_udp_port_unreachable_fails_the_next_send_then_sending_resumes(
    make_rig: RigFn, serve_udp: ServeUdpFn
) -> None:
    port = free_udp_port()
    rig = make_rig({"*": syslog(port, "udp")})
    assert await rig.send(TENANT, lane(TENANT, 1, 0)) is None  # lossy: nobody said no yet
    await asyncio.sleep(0.2)  # the ICMP port unreachable comes back
    error = await rig.fail(TENANT, lane(TENANT, 1, 1))
    assert error.retriable
    assert f"udp://{HOST}:{port}" in str(error)

    collector = await serve_udp(port)
    batch = lane(TENANT, 2, 1)
    assert await rig.send(TENANT, batch) is None
    await collector.wait_for(2)
    assert [parse_5424(d).msg for d in collector.datagrams] == jsons(batch)
    assert rig.metric("siem_export_syslog_connections_lost_total", transport="udp") == 1


async def test_udp_a_batch_the_kernel_refused_midway_is_not_acknowledged(
    make_rig: RigFn,
) -> None:
    port = free_udp_port()
    rig = make_rig({"*": syslog(port, "udp")})
    # On loopback the ICMP of the first datagram is back before the second is sent, whose
    # send() then fails with ECONNREFUSED: that datagram never left, yet the batch is None.
    error = await rig.fail(TENANT, lane(TENANT, 5))
    assert error.retriable
    assert f"udp://{HOST}:{port}" in str(error)


# --- health ---------------------------------------------------------------------------------


async def test_three_failures_alert_failing_once_and_a_confirmed_send_recovers(
    make_rig: RigFn, serve: ServeFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every attempt connects (no 1 s backoff), so the test need not sleep it away.
    monkeypatch.setattr(sink_module, "_CONNECT_BACKOFF_SECONDS", 0.0)
    port = free_port()
    endpoint = f"tcp://{HOST}:{port}"
    settings = SETTINGS.model_copy(update={"health": HealthThresholds(failing_after_failures=3)})
    rig = make_rig({"*": syslog(port)}, settings)
    batch = lane(TENANT, 3)
    for attempt in range(3):
        assert (await rig.fail(TENANT, batch)).retriable
        assert len(rig.alerts) == (1 if attempt == 2 else 0)
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="failed") == 3
    [record] = rig.records()
    assert rig.alerts[0][0] == TENANT
    assert record["tenant_id"] == TENANT
    assert record["method"] == "syslog"
    assert record["endpoint"] == endpoint
    assert record["state"] == "failing"
    assert record["consecutive_failures"] == 3
    assert "cannot connect" in record["reason"]
    assert rig.sink.health.state(TENANT, endpoint) == "failing"

    await serve(port=port)
    await confirmed(await rig.send(TENANT, batch))
    await asyncio.sleep(0)  # the sink's confirmation callback runs before this task resumes
    assert rig.states() == ["failing", "recovered"]
    assert rig.records()[1]["endpoint"] == endpoint
    assert rig.sink.health.state(TENANT, endpoint) == "healthy"


async def test_a_disabled_collector_is_not_contacted_until_the_destination_changes(
    make_rig: RigFn, serve: ServeFn, write_dests: DestsFn
) -> None:
    clock = FakeClock()
    thresholds = HealthThresholds(failing_after_seconds=10, disabled_after_seconds=60)
    settings = SETTINGS.model_copy(update={"health": thresholds})
    port = free_port()
    endpoint = f"tcp://{HOST}:{port}"
    rig = make_rig({TENANT: syslog(port)}, settings, clock=clock)
    batch = lane(TENANT, 2)
    assert (await rig.fail(TENANT, batch)).retriable  # the streak starts
    clock.now += 61
    error = await rig.fail(TENANT, batch)  # inside the connect backoff: no new attempt
    assert not error.retriable
    assert "disabled" in str(error)
    assert rig.states() == ["disabled"]
    assert rig.records()[0]["endpoint"] == endpoint

    collector = await serve(port=port)  # the collector is back, but the lane stays off
    error = await rig.fail(TENANT, batch)
    assert not error.retriable
    assert error.retry_after == settings.disabled_retry_seconds
    assert f"{endpoint} is disabled" in str(error)
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="failed") == 1
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="ok") is None
    assert collector.connections == []

    new = write_dests({TENANT: syslog(port, framing="lf")})  # the tenant edits its entry
    rig.sink.update_destinations(rig.dests, new)
    assert rig.states() == ["disabled", "recovered"]
    await confirmed(await rig.send(TENANT, batch))
    assert len(collector.connections) == 1


# --- routing and reconfiguration ------------------------------------------------------------


async def test_an_unrouted_tenant_is_acknowledged_without_connecting(
    make_rig: RigFn, serve: ServeFn
) -> None:
    collector = await serve()
    rig = make_rig({OTHER: syslog(collector.port)})
    assert await rig.send(TENANT, lane(TENANT, 3)) is None
    assert rig.metric("siem_export_syslog_unrouted_events_total") == 3
    assert rig.metric("siem_export_syslog_connects_total", transport="tcp", result="ok") is None
    routed = lane(OTHER, 2)
    await confirmed(await rig.send(OTHER, routed))
    await collector.wait_for(lambda: holds_frames(collector.stream(), 2), "2 frames")
    assert len(collector.connections) == 1  # OTHER's only
    assert msgs(octet_counted(collector.stream())) == jsons(routed)
    assert rig.metric("siem_export_syslog_unrouted_events_total") == 3


async def test_update_destinations_moves_the_tenant_to_the_new_collector(
    make_rig: RigFn, serve: ServeFn, write_dests: DestsFn
) -> None:
    before, after = await serve(), await serve()
    rig = make_rig({TENANT: syslog(before.port)})
    first, second = lane(TENANT, 5, 0), lane(TENANT, 5, 5)
    await confirmed(await rig.send(TENANT, first))
    new = write_dests({TENANT: syslog(after.port)})
    rig.sink.update_destinations(rig.dests, new)
    await confirmed(await rig.send(TENANT, second))
    await after.wait_for(lambda: holds_frames(after.stream(), 5), "5 frames")
    assert msgs(octet_counted(after.stream())) == jsons(second)
    await before.wait_for(lambda: holds_frames(before.stream(), 5), "5 frames")
    assert msgs(octet_counted(before.stream())) == jsons(first)
    assert len(before.connections) == 1
    assert rig.alerts == []


# --- close ----------------------------------------------------------------------------------


async def test_close_fails_unconfirmed_batches_and_leaves_no_task_running(
    make_rig: RigFn, serve: ServeFn, server_tls: ssl.SSLContext, ca_bundle: Path
) -> None:
    tcp, tls = await serve(), await serve(tls=server_tls)
    settings = SETTINGS.model_copy(update={"confirm_seconds": 30.0})
    rig = make_rig(
        {TENANT: syslog(tcp.port), OTHER: syslog(tls.port, "tls", ca_bundle=ca_bundle)},
        settings,
    )
    plain = await rig.send(TENANT, lane(TENANT, 3))
    secure = await rig.send(OTHER, lane(OTHER, 3))
    ours = asyncio.current_task()

    def syslog_tasks() -> list[str]:
        return [
            task.get_name()
            for task in asyncio.all_tasks()
            if task is not ours and task.get_name().startswith("syslog-")
        ]

    assert len(syslog_tasks()) == 4  # a watcher and a confirmer per connection
    async with asyncio.timeout(WAIT):
        await rig.sink.close()
    assert syslog_tasks() == []
    for result in (plain, secure):
        error = await custody_fails(result)
        assert "closed before confirmation" in str(error)
    assert rig.metric("siem_export_syslog_connections") == 0
