"""Syslog connector throughput over TCP and TLS into a real rsyslogd, vs the raw ceiling and
vs rsyslog itself reading the same topic.

    .venv/bin/python bench/syslog.py [--count 100000] [--tenants 100] [--partitions 12]
                                     [--phases tcp,tls,peer-tcp,peer-tls]
                                     [--connector-env SIEM_EXPORT_X=VALUE ...]
                                     [--bootstrap HOST:PORT]

The receiver is a private rsyslogd (Debian's rsyslog 8.2302 with rsyslog-gnutls), a fresh one
for each phase, in a temporary directory (``rsyslogd -n -f CONF -i PIDFILE``, the config checked
with ``-N1`` first): one imtcp input on a free 127.0.0.1 port, octet-counted framing, plain or
with the gtls driver (trustme server certificate for localhost, AuthMode anon). omfile writes
one line per message (flushed at the end of each batch): rsyslog's reception time
(timegenerated, microseconds) and the raw message JSON-string-escaped, so that binary payloads
cannot split a line. This script tails that file; a phase's clock stops at the reception time
of the last of the N distinct events, so how often the file is written or read does not count.

(1) publish N events (--count) of --tenants tenants to a fresh --partitions topic with the real
    publisher; (2) ceiling: a bare consumer decodes every record and encodes it to JSON;
(3) tcp, (4) tls: the connector as production runs it, ``python -m connectors run syslog`` in a
    child process configured only by SIEM_EXPORT_* variables and a destinations file
    (``"*": {syslog: {host: 127.0.0.1, port: P, transport: tcp}}``; for tls also the trustme
    CA as ``ca_bundle`` and ``server_name: localhost``), a fresh consumer group, its ops
    endpoints on a free port. Rate: N / (from /readyz, or the first arrival if that came
    first, to the last distinct event received). Then /metrics is polled until the engine has
    acknowledged all N (a TCP/TLS event counts as delivered SIEM_EXPORT_SYSLOG__CONFIRM_SECONDS
    after the collector's TCP stack took it, 2 s by default), the connector is stopped
    (SIGTERM: drain and commit) and then the receiver. The whole output is checked: each line
    parsed as RFC 5424 with our structured-data element, the event id taken from the JSON
    after it (and compared with the SD's): duplicates, missing, unexpected, order per tenant.
(5) peer-tcp, (6) peer-tls: rsyslog itself reading the same topic: a second rsyslogd with
    imkafka (rsyslog-kafka; a fresh consumer group, auto.offset.reset=earliest) forwarding with
    omfwd (octet-counted; for tls the gtls driver, x509/name against the same CA) to a fresh
    receiver. It forwards the Kafka value as it is (our Avro record: not decoded, not turned
    into JSON or RFC 5424), so it measures the transport path, an upper bound for a forwarder,
    not the same work. Its clock starts when its group has partitions (polled on the broker) or
    at the first arrival if earlier; the event ids are found in the Avro bytes (strings are
    stored as they are), so the same check runs. rsyslog runs with its default queues: each
    worker thread of its main queue may open its own omfwd connection, and order per tenant
    then holds within a connection only (the check counts the connections).

Each phase also reports the CPU of every process (in cores, and the sender's CPU an event,
which the machine's other load disturbs less than a rate) and the connections the receiver
had; the summary puts the phases side by side.

A phase fails, and the next one runs, when no new event arrives for 60 s. The machine has 2
cores shared by the Kafka broker (JVM), the sender (connector or rsyslog peer), the receiving
rsyslogd and this script: figures are noisy. The whole run aborts past 15 minutes; every child
process (rsyslogds, connector, the broker if this script started it) is stopped on exit, error
or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import KafkaException  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from connectors.syslog.config import SyslogSettings  # noqa: E402
from streams.config import KafkaConfig, TopicsConfig  # noqa: E402
from streams.synthetic import EventFactory  # noqa: E402

HOST = "127.0.0.1"
SERVER_NAME = "localhost"  # in the trustme certificate, verified by the connector and omfwd
STALL_SECONDS = 60.0  # a phase fails when no new event arrives for this long
ACK_GRACE_SECONDS = 30.0  # beyond confirm_seconds, for the engine to acknowledge everything
SYSLOG_METRICS = ("siem_export_syslog_",)
CONFIRM_SETTING = "SIEM_EXPORT_SYSLOG__CONFIRM_SECONDS"
# rsyslogd marks its warnings and errors with a link to its error catalogue.
_RSYSLOG_PROBLEM = re.compile(r"\[v\d+\.\d+.*try https?://www\.rsyslog\.com/e/")
_RSYSLOG_NOTICE = re.compile(r"internal message \([5-7],")  # notice, info, debug
# An event id as it stands in a received line (which is JSON-string-escaped, see above): in the
# connector's JSON after the structured data, or as an Avro string in the peer's raw record.
_JSON_EVENT_ID = re.compile(rb'\\"event_id\\":\\"(evt_[0-9a-z]+)\\"')
_AVRO_EVENT_ID = re.compile(rb"(evt_[0-9a-z]{12})")
# Our RFC 5424 message: header, one SD element naming event, tenant and outcome, then the JSON.
_RFC5424 = re.compile(
    r'<\d{1,3}>1 \S+ \S+ \S+ \S+ \S+ \[\S+ event_id="([^"\\]*)" tenant_id="([^"\\]*)" '
    r'outcome="[^"\\]*"\] (\{.*\})',
    re.DOTALL,
)


@dataclass(frozen=True)
class Phase:
    """One measured run: the connector or the rsyslog peer, over tcp or tls."""

    key: str  # for --phases and the phase's directory
    name: str  # in the report
    transport: str
    peer: bool


PHASES = {
    p.key: p
    for p in (
        Phase("tcp", "connector tcp", "tcp", peer=False),
        Phase("tls", "connector tls", "tls", peer=False),
        Phase("peer-tcp", "rsyslog peer tcp (raw Avro)", "tcp", peer=True),
        Phase("peer-tls", "rsyslog peer tls (raw Avro)", "tls", peer=True),
    )
}


class PhaseFailed(Exception):
    """One phase could not finish (the others still run)."""


# --- rsyslogd processes --------------------------------------------------------------------------


def find_rsyslogd() -> str:
    """Path of rsyslogd (also looked for in /usr/sbin, which a non-root PATH may lack)."""
    found = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if found is None:
        raise SystemExit(
            "rsyslogd not found: this benchmark needs the Debian packages rsyslog, "
            "rsyslog-gnutls and rsyslog-kafka (scripts/bootstrap installs them)"
        )
    return found


def tcp_sockets(port: int, end: int, state: str) -> int:
    """Sockets in /proc/net/tcp whose local (``end`` 1) or remote (2) end is 127.0.0.1:``port``
    and whose state is ``state`` (0A listening, 01 established)."""
    address = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as rows:
        return sum(
            1
            for fields in (row.split() for row in rows)
            if fields[end] == address and fields[3] == state
        )


@dataclass(frozen=True)
class Tls:
    """trustme material: the receiver's certificate chain and key, the CA that signed them."""

    chain: str
    key: str
    ca: Path


class Rsyslogd:
    """A private rsyslogd in ``directory`` running ``render_config()``; a context manager
    that starts it (config checked with -N1 first) and stops it."""

    role = "rsyslogd"

    def __init__(self, directory: Path, tls: Tls | None) -> None:
        self.directory = directory
        self.tls = tls
        self.work = directory / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = directory / "rsyslog.conf"
        self.log = directory / "rsyslogd.log"  # its stdout and stderr
        self.launched = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    def render_config(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def start(self, port: int | None = None, timeout: float = 15.0) -> None:
        """Check the config with -N1, start rsyslogd, wait until it listens on ``port``."""
        binary = find_rsyslogd()
        self.config.write_text(self.render_config(), encoding="utf-8")
        argv = [binary, "-N1", "-f", str(self.config)]
        check = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
        said = (check.stdout + check.stderr).strip()
        if check.returncode != 0 or _RSYSLOG_PROBLEM.search(said):
            raise PhaseFailed(f"rsyslogd -N1 rejects the {self.role} config:\n{said}")
        with self.log.open("ab") as log:
            self.launched = time.time()
            self._proc = subprocess.Popen(  # noqa: S603 - rsyslogd, fixed arguments
                [binary, "-n", "-f", str(self.config), "-i", str(self.directory / "pid")],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is ours to handle: we stop it in stop()
                preexec_fn=_common.die_with_parent,  # the only way to set PR_SET_PDEATHSIG
            )
        deadline = time.monotonic() + timeout
        while port is not None and not tcp_sockets(port, 1, "0A"):
            self.check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise PhaseFailed(f"{self.role} rsyslogd does not listen on {port}\n{self.tail()}")
            time.sleep(0.02)

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise PhaseFailed(
                f"{self.role} rsyslogd exited with {self._proc.returncode}:\n{self.tail()}"
            )

    def stop(self) -> None:
        """SIGTERM (rsyslogd drains its queues and flushes its files), SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _common.terminate(proc, 15.0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def tail(self, lines: int = 12) -> str:
        """The end of rsyslogd's own output (its errors, e.g. a failed TLS handshake)."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:]) or "(no output)"
        return "(no output)"

    def problems(self) -> list[str]:
        """rsyslogd's warning and error lines so far (not its notices), repeats once."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(encoding="utf-8", errors="replace")
            return sorted(
                {
                    line[:160]
                    for line in text.splitlines()
                    if _RSYSLOG_PROBLEM.search(line) and not _RSYSLOG_NOTICE.search(line)
                }
            )
        return []


class Receiver(Rsyslogd):
    """The receiving rsyslogd: one imtcp input (plain, or TLS with gtls), each message to a file."""

    role = "receiver"

    def __init__(self, directory: Path, tls: Tls | None) -> None:
        super().__init__(directory, tls)
        self.output = directory / "received.txt"
        self.port = 0

    def render_config(self) -> str:
        tls = ""
        if self.tls is not None:
            tls = (
                'StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"\n'
                f'      StreamDriver.CAFile="{self.tls.ca}"\n'
                f'      StreamDriver.CertFile="{self.tls.chain}"\n'
                f'      StreamDriver.KeyFile="{self.tls.key}"'
            )
        return f"""\
# Written by bench/syslog.py: a receiver that writes every message it gets, nothing else.
global(workDirectory="{self.work}" maxMessageSize="256k"
       parser.escapeControlCharactersOnReceive="off")
# One worker thread: the file is in the order the messages arrived (with more, batches of
# different workers interleave).
main_queue(queue.workerThreads="1")
module(load="imtcp" maxSessions="100")
# Reception time, then the raw message as a JSON string body (no raw LF can appear in it).
template(name="Received" type="string" string="%timegenerated:::date-rfc3339% %rawmsg:::json%\\n")
ruleset(name="received") {{
  action(type="omfile" file="{self.output}" template="Received" ioBufferSize="1m"
         flushOnTXEnd="on")
}}
input(type="imtcp" address="{HOST}" port="{self.port}" ruleset="received"
      SupportOctetCountedFraming="on" MaxFrameSize="262144"
      {tls})
"""

    def __enter__(self) -> Receiver:
        for attempt in range(3):
            self.port = _common.free_port()
            try:
                self.start(port=self.port)
                return self
            except PhaseFailed:
                if attempt == 2 or "already in use" not in self.tail():
                    raise
        raise AssertionError("unreachable")


class Peer(Rsyslogd):
    """rsyslog as a peer of the connector: imkafka reads the topic, omfwd forwards each record."""

    role = "peer"

    def __init__(
        self, directory: Path, kafka: KafkaConfig, topic: str, port: int, tls: Tls | None
    ) -> None:
        super().__init__(directory, tls)
        self.kafka = kafka
        self.topic = topic
        self.port = port
        self.group = f"bench-rsyslog-{uuid.uuid4().hex[:8]}"

    def render_config(self) -> str:
        brokers = ", ".join(f'"{b.strip()}"' for b in self.kafka.bootstrap_servers.split(","))
        ca, tls = "", ""
        if self.tls is not None:
            ca = f'\n       DefaultNetstreamDriverCAFile="{self.tls.ca}"'
            tls = (
                '\n         StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode='
                f'"x509/name" StreamDriverPermittedPeers="{SERVER_NAME}"'
            )
        return f"""\
# Written by bench/syslog.py: rsyslog forwarding the raw Kafka records of a topic.
global(workDirectory="{self.work}" maxMessageSize="256k"
       parser.escapeControlCharactersOnReceive="off"{ca})
module(load="imkafka")
template(name="Raw" type="string" string="%rawmsg%")
ruleset(name="forward") {{
  action(type="omfwd" target="{HOST}" port="{self.port}" protocol="tcp"
         TCP_Framing="octet-counted" template="Raw"{tls})
}}
input(type="imkafka" topic="{self.topic}" broker=[{brokers}] consumergroup="{self.group}"
      confParam=["auto.offset.reset=earliest"] ruleset="forward")
"""


def wait_group_assigned(
    kafka: KafkaConfig, group: str, deadline: float, alive: Callable[[], None]
) -> float:
    """Poll the broker until ``group`` has partitions assigned; the time.time() it had."""
    admin = AdminClient(kafka.client_config())
    while True:
        alive()
        with contextlib.suppress(KafkaException):
            found = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
            if any(m.assignment.topic_partitions for m in found.members):
                return time.time()
        if time.monotonic() > deadline:
            raise _common.BenchTimeout(f"consumer group {group} got no partitions in time")
        time.sleep(0.1)


# --- what arrived --------------------------------------------------------------------------------


def _reception_time(line: bytes) -> float:
    return datetime.fromisoformat(line.split(b" ", 1)[0].decode("ascii")).timestamp()


class Capture:
    """Tails a receiver's output: the reception time of each event's first copy."""

    def __init__(self, path: Path, event_id: re.Pattern[bytes]) -> None:
        self.path = path
        self.event_id = event_id
        self.first: dict[str, float] = {}
        self._offset = 0
        self._partial = b""

    def poll(self) -> int:
        """Read what was appended since the last call; the count of distinct events so far."""
        try:
            with self.path.open("rb") as out:
                out.seek(self._offset)
                data = out.read()
        except FileNotFoundError:  # omfile creates it with the first message
            return len(self.first)
        self._offset += len(data)
        data = self._partial + data
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        first = self.first
        for line in data[:end].splitlines():
            match = self.event_id.search(line)
            if match is not None:
                event_id = match.group(1).decode("ascii")
                if event_id not in first:
                    first[event_id] = _reception_time(line)
        return len(first)

    def wait_for(
        self, count: int, deadline: float, what: str, alive: Callable[[], None]
    ) -> tuple[float, float]:
        """Until ``count`` distinct events arrived: (first, last) reception times."""
        seen, progress_at = 0, time.monotonic()
        while True:
            now_seen = self.poll()
            if now_seen >= count:
                arrivals = self.first.values()
                return min(arrivals), max(arrivals)
            alive()
            now = time.monotonic()
            if now_seen > seen:
                seen, progress_at = now_seen, now
            elif now - progress_at > STALL_SECONDS:
                raise PhaseFailed(
                    f"{what}: {seen} of {count} events arrived, then none for {STALL_SECONDS:g} s"
                )
            if now > deadline:
                raise _common.BenchTimeout(f"{what}: {seen} of {count} events in the time left")
            time.sleep(0.1)

    def arrival_spread(self) -> str:
        """When shares of the events had arrived, in seconds after the first one."""
        times = sorted(self.first.values())
        if not times:
            return "no arrivals"
        at = {q: times[min(len(times) - 1, max(0, int(q * len(times)) - 1))] for q in (0.5, 0.9)}
        return (
            f"half the events arrived {at[0.5] - times[0]:.2f} s after the first, 90% after "
            f"{at[0.9] - times[0]:.2f} s, all after {times[-1] - times[0]:.2f} s"
        )


@dataclass
class Received:
    """The receiver's whole output, parsed after the phase."""

    by_tenant: dict[str, list[str]]
    lines: int
    malformed: int
    sample: str  # the first malformed line, shortened


def parse_output(path: Path, event_of: Callable[[bytes], tuple[str, str]]) -> Received:
    """Every line of a receiver's output through ``event_of``: (tenant, event id), or an error
    (ValueError, IndexError, KeyError, TypeError) for a malformed line."""
    by_tenant: defaultdict[str, list[str]] = defaultdict(list)
    lines = malformed = 0
    sample = ""
    with path.open("rb") as out:
        for line in out:
            lines += 1
            try:
                tenant, event_id = event_of(line)
            except (ValueError, IndexError, KeyError, TypeError):  # JSONDecodeError is one
                malformed += 1
                sample = sample or line[:200].decode("utf-8", "replace")
                continue
            by_tenant[tenant].append(event_id)
    return Received(dict(by_tenant), lines, malformed, sample)


def syslog_event(line: bytes) -> tuple[str, str]:
    """Our RFC 5424 message: tenant and event id from the JSON after the SD element (which
    must name the same)."""
    raw = orjson.loads(b'"' + line.rstrip(b"\n").split(b" ", 1)[1] + b'"')
    match = _RFC5424.fullmatch(raw)
    if match is None:
        raise ValueError("not our RFC 5424 message")
    event = orjson.loads(match.group(3))
    if (event["event_id"], event["tenant_id"]) != match.group(1, 2):
        raise ValueError("the SD element and the JSON name different events")
    return event["tenant_id"], event["event_id"]


def raw_event(tenant_of: dict[str, str]) -> Callable[[bytes], tuple[str, str]]:
    """A raw Avro record: the first event id in it (its first field); the tenant published."""

    def event_of(line: bytes) -> tuple[str, str]:
        match = _AVRO_EVENT_ID.search(line, line.find(b" "))
        if match is None:
            raise ValueError("no event id")
        event_id = match.group(1).decode("ascii")
        return tenant_of.get(event_id, "?"), event_id

    return event_of


# --- phases --------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every phase shares."""

    kafka: KafkaConfig
    topics: TopicsConfig
    tmp: Path
    tls: Tls
    expected: dict[str, list[str]]
    connector_env: dict[str, str]
    confirm_seconds: float
    time_left: Callable[[], float]

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.expected.values())


@dataclass
class Result:
    """One phase: when it started and ended (time.time()) and what arrived."""

    name: str
    events: int
    launched: float = 0.0
    ready_at: float = 0.0  # /readyz, or the peer's group with partitions
    first_at: float = 0.0
    done_at: float = 0.0
    check: _common.Check | None = None
    details: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def rate(self) -> _common.Rate:
        """From readiness (or the first arrival, if earlier) to the last distinct event."""
        return _common.Rate(self.events, self.done_at - min(self.ready_at, self.first_at))

    @property
    def rate_from_launch(self) -> _common.Rate:
        return _common.Rate(self.events, self.done_at - self.launched)


def syslog_destination(transport: str, port: int, ca: Path) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": HOST, "port": port, "transport": transport}
    if transport == "tls":
        destination |= {"ca_bundle": str(ca), "server_name": SERVER_NAME}
    return destination


def wait_acknowledged(
    connector: _common.ConnectorProcess, count: int, timeout: float
) -> tuple[float | None, float]:
    """Poll /metrics until the engine acknowledged ``count`` events: (time.time(), count)."""
    deadline = time.monotonic() + timeout
    delivered = 0.0
    while time.monotonic() < deadline:
        delivered = connector.metrics().get("siem_export_delivered_total", 0.0)
        if delivered >= count:
            return time.time(), delivered
        time.sleep(0.2)
    return None, delivered


def run_connector(phase: Phase, setup: Setup) -> Result:
    """The connector from a fresh group until a fresh receiver holds every event."""
    result = Result(phase.name, setup.count)
    directory = setup.tmp / phase.key
    transport = phase.transport
    tls = setup.tls if transport == "tls" else None
    with Receiver(directory, tls) as receiver:
        destination = syslog_destination(transport, receiver.port, setup.tls.ca)
        capture = Capture(receiver.output, _JSON_EVENT_ID)
        with _common.ConnectorProcess(
            "syslog",
            setup.kafka,
            setup.topics,
            setup.tmp,
            destination,
            setup.connector_env,
            metrics_of=SYSLOG_METRICS,
        ) as connector:
            deadline = time.monotonic() + setup.time_left()
            result.ready_at = connector.wait_ready(deadline)
            before = _common.CpuSample.take(connector.pid, receiver.pid)

            def alive() -> None:
                connector.check_alive()
                receiver.check_alive()

            result.first_at, result.done_at = capture.wait_for(
                setup.count, deadline, phase.name, alive
            )
            after = _common.CpuSample.take(connector.pid, receiver.pid)
            connections = tcp_sockets(receiver.port, 2, "01")
            acked_at, acked = wait_acknowledged(
                connector, setup.count, setup.confirm_seconds + ACK_GRACE_SECONDS
            )
            metrics = connector.metrics()
            connector.stop()
        receiver.stop()  # flushes what arrived while the connector drained
        received = parse_output(receiver.output, syslog_event)
    result.launched = connector.launched
    result.check = _common.verify(setup.expected, received.by_tenant)
    acked_note = (
        f"the engine had acknowledged all {setup.count} events "
        f"{acked_at - result.done_at:.2f} s after the last arrival"
        if acked_at is not None
        else f"the engine had acknowledged only {acked:.0f} of {setup.count} events "
        f"{setup.confirm_seconds + ACK_GRACE_SECONDS:g} s after the last arrival"
    )
    result.details = [
        f"launch to /readyz {result.ready_at - result.launched:.2f} s, /readyz to first event "
        f"{result.first_at - result.ready_at:+.2f} s; {capture.arrival_spread()}",
        f"{acked_note} (confirm_seconds {setup.confirm_seconds:g})",
        describe_cpu(before, after, "connector", setup.count),
        describe_received(received, result.check, connections),
        f"connector stopped (SIGTERM) in {connector.stop_seconds:.2f} s, exit code "
        f"{connector.exit_code}",
        "connector metrics: "
        + ", ".join(_common.describe_metrics(metrics, _common.DELIVERY_LATENCY_MEAN)),
    ]
    if logs := connector.log_summary():
        result.details.append(f"connector log lines: {logs}")
    if problems := receiver.problems():
        result.details.append(f"receiver rsyslogd said: {problems[:5]}")
    shutil.rmtree(directory, ignore_errors=True)  # the output is ~0.7 kB an event
    return result


def run_peer(phase: Phase, setup: Setup) -> Result:
    """rsyslog (imkafka -> omfwd) from a fresh group until a fresh receiver holds every event."""
    result = Result(phase.name, setup.count)
    directory = setup.tmp / phase.key
    tls = setup.tls if phase.transport == "tls" else None
    with Receiver(directory / "receiver", tls) as receiver:
        capture = Capture(receiver.output, _AVRO_EVENT_ID)
        with Peer(directory / "peer", setup.kafka, setup.topics.events, receiver.port, tls) as peer:
            deadline = time.monotonic() + setup.time_left()

            def alive() -> None:
                peer.check_alive()
                receiver.check_alive()

            result.launched = peer.launched
            result.ready_at = wait_group_assigned(setup.kafka, peer.group, deadline, alive)
            before = _common.CpuSample.take(peer.pid, receiver.pid)
            try:
                result.first_at, result.done_at = capture.wait_for(
                    setup.count, deadline, phase.name, alive
                )
            except PhaseFailed as exc:
                raise PhaseFailed(f"{exc}\npeer rsyslogd said:\n{peer.tail()}") from None
            after = _common.CpuSample.take(peer.pid, receiver.pid)
            connections = tcp_sockets(receiver.port, 2, "01")
            peer_problems = peer.problems()
        receiver.stop()
        tenant_of = {e: tenant for tenant, ids in setup.expected.items() for e in ids}
        received = parse_output(receiver.output, raw_event(tenant_of))
    result.check = _common.verify(setup.expected, received.by_tenant)
    result.details = [
        f"launch to group with partitions {result.ready_at - result.launched:.2f} s, to first "
        f"event {result.first_at - result.ready_at:+.2f} s; {capture.arrival_spread()}",
        describe_cpu(before, after, "rsyslog peer", setup.count),
        describe_received(received, result.check, connections),
    ]
    if peer_problems:
        result.details.append(f"peer rsyslogd said: {peer_problems[:5]}")
    if problems := receiver.problems():
        result.details.append(f"receiver rsyslogd said: {problems[:5]}")
    shutil.rmtree(directory, ignore_errors=True)
    return result


# --- report --------------------------------------------------------------------------------------


def describe_cpu(
    before: _common.CpuSample, after: _common.CpuSample, sender: str, count: int
) -> str:
    """CPU in cores, and the sender's CPU an event: less sensitive to the machine's other load
    than a rate, though the events it handled before readiness are not counted."""
    per_event = (after.connector - before.connector) / count * 1e6
    cores = _common.describe_cpu(before, after, (sender, "rsyslog receiver"))
    return f"{cores}; {sender} {per_event:.0f} µs of CPU an event"


def describe_received(received: Received, check: _common.Check, connections: int) -> str:
    malformed = f"malformed lines {received.malformed}"
    if received.malformed:
        malformed += f" (first: {received.sample!r})"
    over = f"over {connections} connection{'s' if connections != 1 else ''}"
    if connections > 1 and check.out_of_order:
        over += " (order is kept within a connection only)"
    return f"check: {received.lines} lines {over}, {malformed}; {check}"


def table(ceiling: _common.Rate, results: list[Result]) -> list[str]:
    """The summary: one row per phase, rates against the ceiling."""
    row = "{:<31} {:>7} {:>8} {:>9} {:>9} {:>10} {:>8}  {}"
    rows = [
        row.format(
            "phase",
            "events",
            "seconds",
            "events/s",
            "x ceiling",
            "duplicates",
            "missing",
            "tenant order",
        ),
        row.format(
            "ceiling (consume, decode, JSON)",
            ceiling.events,
            f"{ceiling.seconds:.2f}",
            f"{ceiling.per_second:,.0f}",
            "1.00x",
            "-",
            "-",
            "-",
        ),
    ]
    for r in results:
        if r.error is not None or r.check is None:
            rows.append(f"{r.name:<31} FAILED: {(r.error or '?').splitlines()[0][:90]}")
            continue
        disorder = len(r.check.out_of_order)
        rows.append(
            row.format(
                r.name,
                r.events,
                f"{r.rate.seconds:.2f}",
                f"{r.rate.per_second:,.0f}",
                _common.ratio(r.rate, ceiling),
                r.check.duplicates,
                r.check.missing,
                f"{disorder} tenants out of order" if disorder else "kept",
            )
        )
    return rows


def rsyslog_version() -> str:
    """``rsyslogd 8.2302.0`` (the first line of ``rsyslogd -v``, trimmed)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(  # noqa: S603 - rsyslogd, fixed arguments
            [find_rsyslogd(), "-v"], capture_output=True, text=True, timeout=10, check=False
        )
        version = re.search(r"rsyslogd\s+(\S+)", out.stdout)
        if version is not None:
            return f"rsyslogd {version.group(1)}"
    return "rsyslogd (version unknown)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=12)
    _common.add_phases(parser, list(PHASES))
    _common.add_connector_env(parser, f"{CONFIRM_SETTING}=0.5")
    parser.add_argument("--bootstrap", default=None, help="use this cluster instead of a new one")
    args = parser.parse_args()
    find_rsyslogd()  # before anything starts
    _common.note_small_count(args.count)
    _common.run_bounded(
        lambda time_left, summary: _main(args, time_left, summary),
        f"{_common.cpu_count()} cores shared by broker, sender, rsyslog receiver and this "
        "script: figures are noisy",
    )


def _main(args: argparse.Namespace, time_left: Callable[[], float], summary: list[str]) -> None:
    connector_env = dict(args.connector_env)
    confirm = float(connector_env.get(CONFIRM_SETTING, SyslogSettings().confirm_seconds))
    print(
        f"machine: {platform.python_implementation()} {platform.python_version()}, "
        f"{_common.cpu_count()} cores, shared by the Kafka broker (JVM), the sender (connector "
        f"or rsyslog peer), the receiving rsyslogd and this script (figures are noisy); "
        f"{rsyslog_version()}",
        flush=True,
    )
    if connector_env:
        print("connector settings added: " + " ".join(f"{k}={v}" for k, v in connector_env.items()))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="siem-bench-sl-")))
        (chain, key), ca = _common.make_tls(tmp)
        kafka = stack.enter_context(_common.broker(args.bootstrap))

        # (1) publish, (2) ceiling
        topics = _common.make_topics(kafka, args.partitions, "sl")
        produced = _common.publish(kafka, topics.events, args.count, args.tenants)
        events = list(EventFactory(args.tenants, seed=1).events(args.count))
        print(
            f"\n[1] publish: {args.count} events, {args.tenants} tenants, {args.partitions} "
            f"partitions (topic {topics.events})\n  publish (validate + encode + produce):  "
            f"{produced}",
            flush=True,
        )
        ceiling = _common.ceiling(kafka, topics.events, args.count)
        _common.warm_group_coordinator(kafka, topics.events)
        print(f"\n[2] ceiling (consume + decode + JSON):   {ceiling}", flush=True)

        setup = Setup(
            kafka=kafka,
            topics=topics,
            tmp=tmp,
            tls=Tls(chain, key, ca),
            expected=_common.expected_order(events),
            connector_env=connector_env,
            confirm_seconds=confirm,
            time_left=time_left,
        )
        results: list[Result] = []
        for number, key in enumerate(args.phases, start=3):
            phase = PHASES[key]
            sender = (
                "rsyslogd imkafka -> omfwd, fresh consumer group; it forwards the raw Avro "
                "record (no decoding, no JSON, no RFC 5424): the transport path only, an upper "
                "bound for a forwarder"
                if phase.peer
                else "`python -m connectors run syslog`, fresh consumer group"
            )
            print(
                f"\n[{number}] {phase.name}: {sender}; until the receiver has all {args.count} "
                "events",
                flush=True,
            )
            try:
                result = (run_peer if phase.peer else run_connector)(phase, setup)
            except PhaseFailed as exc:
                result = Result(phase.name, args.count, error=str(exc))
                print(f"  FAILED: {exc}", flush=True)
            else:
                print(
                    f"  from readiness: {result.rate} = {_common.ratio(result.rate, ceiling)} "
                    f"ceiling (from launch {result.rate_from_launch.per_second:,.0f}/s = "
                    f"{_common.ratio(result.rate_from_launch, ceiling)})"
                )
                for line in result.details:
                    print(f"  {line}", flush=True)
            results.append(result)

        summary.extend(table(ceiling, results))
        summary.append(
            "seconds: from readiness (connector /readyz; peer: its group has partitions), or "
            "the first arrival if earlier, to rsyslog's reception of the last distinct event"
        )
        summary.append(
            f"connector confirm_seconds {confirm:g}: an event is acknowledged to the engine "
            "that long after the collector's TCP stack took it (the engine keeps sending while "
            "events are in the sink's custody; it delays commits and the SIGTERM drain)"
        )
        summary.append(
            "the rsyslog peer forwards the raw Avro record without decoding it: transport "
            "path only, an upper bound for a forwarder"
        )


if __name__ == "__main__":
    main()
