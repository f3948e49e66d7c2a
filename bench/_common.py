"""Shared by the benchmark scripts: a broker to run against, a topic filled with events, and the
raw consume ceiling every benchmark reports its figures against (measured in the same run);
for the connector benchmarks (webhook.py, syslog.py, storage.py) also the connector as a child
process (launch, /readyz, /metrics, SIGTERM), CPU and memory accounting, TLS material and the
delivery check."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from streams import devbroker
from streams.codec import AuditEventCodec
from streams.config import KafkaConfig, TopicsConfig
from streams.event import to_json_bytes
from streams.publisher import Publisher
from streams.synthetic import EventFactory
from streams.tail import tail_consumer_config
from streams.topics import ensure_topics, standard_topics

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A connector log line: "<date> <time> LEVEL logger: Message. key=value key=value ..."
_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+): (.*?)((?: [a-z_]+=\S.*)?)$")
_ERROR_FIELD = re.compile(r' error=("(?:[^"\\]|\\.)*"|\S+)')
# No proxies from the environment for our own loopback requests.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Rate:
    """Events processed in some seconds."""

    events: int
    seconds: float
    cpu_seconds: float | None = None  # process CPU over the same span, where measured

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return f"{self.events} events in {self.seconds:.2f} s = {self.per_second:,.0f} events/s"


class GcClock:
    """Collections of Python's cyclic garbage collector in this process, and the time they took
    (all threads; measured through ``gc.callbacks`` while the ``with`` block runs)."""

    def __init__(self) -> None:
        self.collections = 0
        self.seconds = 0.0
        self._began = 0.0

    def _callback(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.collections += 1
            self.seconds += time.perf_counter() - self._began

    def __enter__(self) -> Self:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def __str__(self) -> str:
        return f"garbage collector {self.collections} runs, {self.seconds:.2f} s"


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[KafkaConfig]:
    """The given cluster, or a fresh local broker in a temporary directory (stopped after)."""
    if bootstrap:
        yield KafkaConfig(bootstrap_servers=bootstrap)
        return
    with tempfile.TemporaryDirectory(prefix="siem-bench-") as tmp:
        info = devbroker.up(Path(tmp))
        try:
            yield KafkaConfig(bootstrap_servers=info.bootstrap)
        finally:
            devbroker.down(Path(tmp))


def create_topic(kafka: KafkaConfig, partitions: int) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    admin = AdminClient(kafka.client_config())
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def publish(kafka: KafkaConfig, topic: str, count: int, tenants: int, seed: int = 1) -> Rate:
    """Validate, encode and produce ``count`` synthetic events through the real publisher."""
    return publish_events(kafka, topic, list(EventFactory(tenants, seed=seed).events(count)))


def publish_events(kafka: KafkaConfig, topic: str, events: Sequence[Mapping[str, Any]]) -> Rate:
    """Validate, encode and produce ``events`` through the real publisher (for a script that
    needs the events too: generating 100,000 synthetic events takes several seconds)."""
    count = len(events)
    began = time.perf_counter()
    with Publisher(kafka, topic, overrides={"linger.ms": 20, "batch.size": 1_000_000}) as pub:
        for event in events:
            pub.publish(event)
        left = pub.flush(120)
    if left:
        raise RuntimeError(f"{left} events were not delivered")
    return Rate(count, time.perf_counter() - began)


def ceiling(kafka: KafkaConfig, topic: str, count: int) -> Rate:
    """The raw ceiling: a bare consumer that decodes every record and encodes it to JSON."""
    codec = AuditEventCodec()
    consumer = Consumer(tail_consumer_config(kafka) | {"enable.partition.eof": False})
    meta = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    seen = 0
    began = time.perf_counter()
    cpu = time.process_time()
    try:
        while seen < count:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error() is None:
                    to_json_bytes(codec.decode(msg.value() or b""))
                    seen += 1
            if time.perf_counter() - began > 600:
                raise RuntimeError(f"ceiling read only {seen} of {count} events in 600 s")
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    finally:
        consumer.close()
    return Rate(seen, seconds, cpu)


def rss_mib() -> float:
    """Peak resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_count() -> int:
    return os.cpu_count() or 1


def proc_status_kib(pid: int | str, field_name: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/<pid>/status, in KiB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def children_rss_kib(pid: int | str) -> int:
    """VmRSS of a process's child processes together (the storage connector's decoding
    workers), in KiB; 0 without children."""
    return sum(proc_status_kib(child, "VmRSS") or 0 for child in child_pids(pid))


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` seconds: peak and last sample, and the
    kernel's own high-water mark (VmHWM) as last seen."""

    def __init__(self, pid: int | str, interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.last_kib = 0
        self.hwm_kib = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kib = proc_status_kib(self.pid, "VmRSS")
            if kib is None:
                return
            self.samples += 1
            self.last_kib = kib
            self.peak_kib = max(self.peak_kib, kib)
            self.hwm_kib = max(self.hwm_kib, proc_status_kib(self.pid, "VmHWM") or 0)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def die_with_parent() -> None:  # runs in the child before exec
    """``preexec_fn`` of a server child: the kernel SIGTERMs it if this script dies without
    stopping it (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def warm_group_coordinator(kafka: KafkaConfig, topic: str) -> None:
    """Make the broker create its offsets topic before any timed run: on a fresh broker the
    first consumer group otherwise waits seconds for the coordinator, which no real
    deployment pays."""
    consumer = Consumer(kafka.client_config() | {"group.id": f"bench-warm-{uuid.uuid4().hex[:8]}"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                consumer.committed([TopicPartition(topic, 0)], timeout=10)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


TIME_LIMIT_SECONDS = 15 * 60


class BenchTimeout(Exception):
    """The whole benchmark ran past its time limit (``run_bounded``)."""


def run_bounded(
    main: Callable[[Callable[[], float], list[str]], None],
    summary_title: str,
    limit_seconds: int = TIME_LIMIT_SECONDS,
) -> None:
    """Run ``main(time_left, summary)`` for at most ``limit_seconds`` (TIME_LIMIT_SECONDS unless
    a script needs longer), then print the summary.

    Past the limit (SIGALRM, or ``time_left()`` at zero) it aborts with exit code 2 and says the
    figures are partial. Ctrl-C (also when started in the background, where SIGINT is inherited
    as ignored) and SIGTERM unwind through ``main``'s context managers, so child processes and
    a broker it started are stopped; exit code 130.
    """
    began = time.monotonic()

    def time_left() -> float:
        left = limit_seconds - (time.monotonic() - began)
        if left <= 0:
            raise BenchTimeout("time limit reached")
        return left

    def on_alarm(_signum: int, _frame: object) -> None:
        raise BenchTimeout("time limit reached")

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(limit_seconds)
    summary: list[str] = []
    try:
        main(time_left, summary)
    except BenchTimeout as exc:
        print(
            f"\nABORTED: the benchmark ran past {limit_seconds // 60} minutes ({exc}); "
            "figures above are partial.",
            flush=True,
        )
        raise SystemExit(2) from exc
    except KeyboardInterrupt as exc:
        print("\ninterrupted: child processes (and a broker we started) were stopped", flush=True)
        raise SystemExit(130) from exc
    finally:
        signal.alarm(0)
    print(f"\n=== summary ({summary_title}) ===")
    for line in summary:
        print(line)
    print(f"total benchmark time: {time.monotonic() - began:.0f} s")


# --- topics, TLS material, command-line settings ----------------------------------------------


def make_topics(kafka: KafkaConfig, partitions: int, label: str) -> TopicsConfig:
    """A fresh events topic and its companions (``bench-<label>-<random>.events`` etc.)."""
    stem = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    topics = TopicsConfig(
        events=f"{stem}.events",
        events_partitions=partitions,
        dlq=f"{stem}.dlq",
        alerts=f"{stem}.alerts",
        config=f"{stem}.config",
    )
    ensure_topics(kafka, standard_topics(topics))
    return topics


def make_tls(tmp: Path) -> tuple[tuple[str, str], Path]:
    """Server certificate files for 127.0.0.1 and localhost (trustme): ((chain, key), CA)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, bundle = tmp / "server-chain.pem", tmp / "server-key.pem", tmp / "ca.pem"
    for blob in cert.cert_chain_pems:
        with chain.open("ab") as out:
            out.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    return (str(chain), str(key)), bundle


def env_setting(text: str) -> tuple[str, str]:
    """argparse type of ``--connector-env SIEM_EXPORT_X=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key.upper().startswith("SIEM_EXPORT_"):
        raise argparse.ArgumentTypeError("expected SIEM_EXPORT_<SETTING>=<value>")
    return key, value


def add_connector_env(parser: argparse.ArgumentParser, example: str) -> None:
    """``--connector-env SIEM_EXPORT_X=VALUE`` (repeatable): settings added to the connector's."""
    parser.add_argument(
        "--connector-env",
        action="append",
        default=[],
        type=env_setting,
        metavar="SIEM_EXPORT_X=VALUE",
        help=f"extra setting for the connector process (repeatable), e.g. {example}",
    )


def add_phases(parser: argparse.ArgumentParser, known: Sequence[str]) -> None:
    """``--phases a,b``: a subset of ``known`` (default all), run in the order of ``known``."""

    def phases(text: str) -> list[str]:
        wanted = set(text.split(","))
        if unknown := wanted - set(known):
            raise argparse.ArgumentTypeError(
                f"unknown phases {sorted(unknown)}; known: {', '.join(known)}"
            )
        return [p for p in known if p in wanted]

    parser.add_argument(
        "--phases",
        type=phases,
        default=list(known),
        help=f"comma-separated subset of {','.join(known)} (default: all)",
    )


def note_small_count(count: int) -> None:
    """Say that a small backlog flatters a connector's rates from readiness."""
    if count < 50_000:
        print(
            f"note: with --count {count} the connector fetches and decodes much of the "
            "backlog before /readyz answers, so the headline rates flatter it; the rates from "
            "launch are the lower bound (use 50,000 or more)",
            flush=True,
        )


def pooled(*rates: Rate) -> Rate:
    """Several passes of one measurement as one: events, seconds and CPU added up. A phase is
    compared with the ceiling passes just before and just after it (the machine's speed
    drifts by a third within minutes, so one pass on one side is a biased reference)."""
    cpu = [r.cpu_seconds for r in rates]
    return Rate(
        sum(r.events for r in rates),
        sum(r.seconds for r in rates),
        None if None in cpu else sum(c or 0.0 for c in cpu),
    )


def ratio(rate: Rate, ceiling: Rate) -> str:
    return f"{rate.per_second / ceiling.per_second:.2f}x" if ceiling.per_second else "n/a"


# --- CPU accounting ------------------------------------------------------------------------------


def process_cpu(pid: int | str, children: bool = False) -> float:
    """User + system CPU seconds of a process (all threads) so far; 0.0 once it is gone.

    ``children``: add those of its child processes, running (the storage connector's decoding
    workers) or ended and waited for."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)
    if children:
        seconds += (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime, cstime: waited for
        seconds += sum(process_cpu(child, children=True) for child in child_pids(pid))
    return seconds


def child_pids(pid: int | str) -> list[str]:
    """The running child processes of a process."""
    found: list[str] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listing:
                found.extend(listing.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores together."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def broker_pid() -> int | None:
    """The dev broker this script started: a child JVM of ours (None with --bootstrap)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, rest = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if int(rest.split()[1]) == me and comm.endswith("(java"):
            return int(entry.name)
    return None


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far of each process involved, and of the whole machine."""

    connector: float
    receiver: float
    broker: float
    script: float
    machine_busy: float
    machine_total: float
    at: float

    @classmethod
    def take(cls, connector_pid: int, receiver_pid: int) -> CpuSample:
        busy, total = machine_cpu()
        pid = broker_pid()
        return cls(
            process_cpu(connector_pid, children=True),
            process_cpu(receiver_pid),
            process_cpu(pid) if pid else float("nan"),
            process_cpu(os.getpid()),
            busy,
            total,
            time.perf_counter(),
        )


def describe_cpu(
    a: CpuSample, b: CpuSample, names: tuple[str, str] = ("connector", "receiver")
) -> str:
    """CPU between two samples, in cores; ``names`` of the sender and receiver processes."""
    seconds = b.at - a.at
    wall = max(seconds, 1e-9)
    cores = cpu_count()
    machine = (b.machine_busy - a.machine_busy) / max(b.machine_total - a.machine_total, 1e-9)
    broker = "n/a (--bootstrap)" if b.broker != b.broker else f"{(b.broker - a.broker) / wall:.2f}"
    return (
        f"CPU over {seconds:.1f} s, in cores: {names[0]} (with its child processes) "
        f"{(b.connector - a.connector) / wall:.2f}, "
        f"{names[1]} {(b.receiver - a.receiver) / wall:.2f}, broker {broker}, this script "
        f"{(b.script - a.script) / wall:.2f}; machine {machine:.0%} busy of {cores} cores"
    )


# --- the connector (child process) ---------------------------------------------------------------

# Engine series every connector exports (prefixes; the connector adds its own).
ENGINE_METRICS = (
    "siem_export_retried",
    "siem_export_failed",
    "siem_export_dead_lettered",
    "siem_export_delivered",
    "siem_export_skipped",
    "siem_export_delivery_latency_seconds",
)
DELIVERY_LATENCY_MEAN = {
    "siem_export_delivery_latency_seconds": "mean engine delivery latency (record "
    "timestamp to ack)",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM a child process and wait for it (it drains first); SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        wait_or_kill(proc, timeout)


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for a child process to exit; SIGKILL it after ``timeout``."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ConnectorProcess:
    """``python -m connectors run <method>`` as production runs it, in its own session.

    Configured only by SIEM_EXPORT_* variables (broker, topics, a fresh consumer group, ops
    port, WARNING logs; then ``env``) and a destinations file whose ``"*"`` default sends every
    tenant to ``destination``. Its ops endpoints are on a free port: /readyz says when it has
    partitions, /metrics is scraped. A context manager: SIGTERM (drain and commit) on exit.
    """

    def __init__(
        self,
        method: str,
        kafka: KafkaConfig,
        topics: TopicsConfig,
        tmp: Path,
        destination: Mapping[str, Any],
        env: Mapping[str, str],
        metrics_of: tuple[str, ...] = (),
        profile_to: Path | None = None,
    ) -> None:
        self.method = method
        self.kafka = kafka
        self.topics = topics
        self.tmp = tmp
        self.destination = dict(destination)
        self.env = dict(env)
        self.metrics_of = ENGINE_METRICS + metrics_of
        self.profile_to = profile_to
        self.group = f"bench-{method}-{uuid.uuid4().hex[:8]}"
        self.ops_port = free_port()
        self.log_path = tmp / f"connector-{self.group}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.launched = 0.0
        self.exit_code: int | None = None
        self.stop_seconds = 0.0
        self.stop_requested_at: float | None = None  # perf_counter() of request_stop()

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def _environment(self, destinations: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIEM_EXPORT_")}
        env |= {
            "PYTHONUNBUFFERED": "1",
            "SIEM_EXPORT_LOG_LEVEL": "WARNING",
            "SIEM_EXPORT_DESTINATIONS_FILE": str(destinations),
            "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "SIEM_EXPORT_TOPICS__EVENTS": self.topics.events,
            "SIEM_EXPORT_TOPICS__DLQ": self.topics.dlq,
            "SIEM_EXPORT_TOPICS__ALERTS": self.topics.alerts,
            "SIEM_EXPORT_TOPICS__CONFIG": self.topics.config,
            "SIEM_EXPORT_ENGINE__GROUP_ID": self.group,
            "SIEM_EXPORT_OPS__PORT": str(self.ops_port),
        }
        return env | self.env

    def __enter__(self) -> Self:
        destinations = self.tmp / f"destinations-{self.group}.yaml"
        # JSON is YAML: the "*" default sends every tenant to the receiver.
        destinations.write_text(json.dumps({"tenants": {"*": {self.method: self.destination}}}))
        argv = [sys.executable]
        if self.profile_to is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile_to)]
        argv += ["-m", "connectors", "run", self.method]
        with self.log_path.open("wb") as log:
            self.launched = time.time()
            self._process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
                argv,
                cwd=ROOT,
                env=self._environment(destinations),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is ours to handle: we stop it in __exit__
            )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.stop(timeout=5 if exc_type is not None else 60)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (drain and commit), SIGKILL after ``timeout``; after ``request_stop`` only
        the wait (a second SIGTERM would stop the connector at once, without draining)."""
        proc = self._process
        if proc is None or self.exit_code is not None:
            return
        if self.stop_requested_at is None:
            began = time.perf_counter()
            terminate(proc, timeout)
        else:
            began = self.stop_requested_at
            wait_or_kill(proc, timeout)
        self.stop_seconds = time.perf_counter() - began
        self.exit_code = proc.returncode

    def request_stop(self) -> None:
        """SIGTERM without waiting: the connector drains (its sink flushes what it holds) while
        the caller watches /metrics; ``stop`` then waits for the exit. Sent once."""
        proc = self._process
        if proc is not None and proc.poll() is None and self.stop_requested_at is None:
            self.stop_requested_at = time.perf_counter()
            proc.send_signal(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"the connector exited with {self._process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_summary(self) -> dict[str, int]:
        """Log records (WARNING and above: all the connector prints) counted by level, logger
        and message, with the ``error=`` field when there is one; other lines as they are."""
        counts: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                record = _LOG_LINE.match(line)
                if record is None:
                    if line.strip() and not line.startswith((" ", "Traceback")):
                        counts[line[:120]] += 1
                    continue
                level, logger, message, fields = record.groups()
                error = _ERROR_FIELD.search(fields or "")
                why = f" [{error.group(1).strip(chr(34))[:100]}]" if error else ""
                counts[f"{level} {logger} {message}{why}"] += 1
        return dict(counts)

    def wait_ready(self, deadline: float) -> float:
        """Poll /readyz until it answers 200 (partitions assigned); the time.time() it did."""
        url = f"http://127.0.0.1:{self.ops_port}/readyz"
        while True:
            self.check_alive()
            with contextlib.suppress(OSError):
                if http_get(url, 1.0)[0] == 200:
                    return time.time()
            if time.monotonic() > deadline:
                raise BenchTimeout("the connector did not become ready in time")
            time.sleep(0.05)

    def metrics(self, names: Sequence[str] = ()) -> dict[str, float]:
        """The engine's and the connector's series worth showing (name{labels}: value); with
        ``names`` (sample names), only those: the connector then collects and formats only
        them (``?name[]=``), which costs its event loop less when polled often."""
        query = urllib.parse.urlencode([("name[]", name) for name in names])
        url = f"http://127.0.0.1:{self.ops_port}/metrics" + (f"?{query}" if query else "")
        status, body = http_get(url, 10)
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            if not family.name.startswith(self.metrics_of):
                continue
            for sample in family.samples:
                if sample.name.endswith(("_created", "_bucket")):
                    continue
                labels = ",".join(
                    f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "connector"
                )
                out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return out


def summed(metrics: dict[str, float], name: str) -> float:
    """A series of ``ConnectorProcess.metrics()`` summed over its labels."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def describe_metrics(metrics: dict[str, float], means: Mapping[str, str]) -> list[str]:
    """Counters as ``name value``; for each histogram of ``means`` its mean in ms (over all
    its labels)."""
    out = []
    for name, value in sorted(metrics.items()):
        if not name.startswith(tuple(means)):
            out.append(f"{name.removeprefix('siem_export_')} {value:g}")
    for name, what in means.items():
        count = summed(metrics, f"{name}_count")
        if count:
            out.append(f"{what} {summed(metrics, f'{name}_sum') / count * 1000:.1f} ms")
    return out


# --- checking what arrived -----------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """What the receiver got compared with what was published."""

    expected: int
    received: int  # copies, duplicates included
    distinct: int
    duplicates: int
    missing: int
    unexpected: int
    out_of_order: list[str]

    def __str__(self) -> str:
        order = "every tenant in publish order"
        if self.out_of_order:
            some = ", ".join(self.out_of_order[:5])
            order = f"{len(self.out_of_order)} tenants OUT OF ORDER ({some})"
        return (
            f"received {self.received} copies of {self.distinct} distinct events of "
            f"{self.expected} published: duplicates {self.duplicates}, missing {self.missing}, "
            f"unexpected {self.unexpected}; {order}"
        )

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.out_of_order)


def expected_order(events: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Event ids per tenant in publish order."""
    per_tenant: defaultdict[str, list[str]] = defaultdict(list)
    for event in events:
        per_tenant[event["tenant_id"]].append(event["event_id"])
    return dict(per_tenant)


def verify(expected: dict[str, list[str]], got: dict[str, list[str]]) -> Check:
    """Order is judged on first arrivals: a re-delivered copy is a duplicate, not disorder."""
    want = {e for ids in expected.values() for e in ids}
    received = sum(len(ids) for ids in got.values())
    distinct = {e for ids in got.values() for e in ids}
    out_of_order = []
    for tenant, ids in expected.items():
        seen: set[str] = set()
        firsts = []
        for event_id in got.get(tenant, []):
            if event_id not in seen:
                seen.add(event_id)
                firsts.append(event_id)
        if [e for e in ids if e in seen] != [e for e in firsts if e in want]:
            out_of_order.append(tenant)
    return Check(
        expected=len(want),
        received=received,
        distinct=len(distinct),
        duplicates=received - len(distinct),
        missing=len(want - distinct),
        unexpected=len(distinct - want),
        out_of_order=out_of_order,
    )
