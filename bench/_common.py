"""Shared by the benchmark scripts: a broker to run against, a topic filled with events, and the
raw consume ceiling every benchmark reports its figures against (measured in the same run)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams import devbroker
from streams.codec import AuditEventCodec
from streams.config import KafkaConfig
from streams.event import to_json_bytes
from streams.publisher import Publisher
from streams.synthetic import EventFactory
from streams.tail import tail_consumer_config


@dataclass(frozen=True)
class Rate:
    """Events processed in some seconds."""

    events: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return f"{self.events} events in {self.seconds:.2f} s = {self.per_second:,.0f} events/s"


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
    events = list(EventFactory(tenants, seed=seed).events(count))
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
    try:
        while seen < count:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error() is None:
                    to_json_bytes(codec.decode(msg.value() or b""))
                    seen += 1
            if time.perf_counter() - began > 600:
                raise RuntimeError(f"ceiling read only {seen} of {count} events in 600 s")
    finally:
        consumer.close()
    return Rate(seen, time.perf_counter() - began)


def rss_mib() -> float:
    """Peak resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_count() -> int:
    return os.cpu_count() or 1


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
    """The whole benchmark ran past TIME_LIMIT_SECONDS."""


def run_bounded(main: Callable[[Callable[[], float], list[str]], None], summary_title: str) -> None:
    """Run ``main(time_left, summary)`` for at most TIME_LIMIT_SECONDS, then print the summary.

    Past the limit (SIGALRM, or ``time_left()`` at zero) it aborts with exit code 2 and says the
    figures are partial. Ctrl-C (also when started in the background, where SIGINT is inherited
    as ignored) and SIGTERM unwind through ``main``'s context managers, so child processes and
    a broker it started are stopped; exit code 130.
    """
    began = time.monotonic()

    def time_left() -> float:
        left = TIME_LIMIT_SECONDS - (time.monotonic() - began)
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
    signal.alarm(TIME_LIMIT_SECONDS)
    summary: list[str] = []
    try:
        main(time_left, summary)
    except BenchTimeout as exc:
        print(
            f"\nABORTED: the benchmark ran past {TIME_LIMIT_SECONDS // 60} minutes ({exc}); "
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
