"""The engine as real processes against the real broker: kill -9 during a stream, a second
process joining and leaving the group, SIGTERM draining and committing."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.config import KafkaConfig, TopicsConfig
from streams.publisher import Publisher
from streams.synthetic import EventFactory
from tests.engine_support import fresh_topics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
_log = logging.getLogger(__name__)


def _start(
    bootstrap: str, topics: TopicsConfig, group: str, out: Path, *extra: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.engine_worker",
            "--bootstrap",
            bootstrap,
            "--topics",
            json.dumps(topics.model_dump()),
            "--group",
            group,
            "--out",
            str(out),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _STARTED.append(proc)
    return proc


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_worker_survives() -> Iterator[None]:
    """Whatever a test asserts, the workers it started do not outlive it."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "READY":
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} before READY")
    raise AssertionError("worker not ready in time")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    proc.send_signal(sig)
    code = proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


def _deliveries(*files: Path) -> list[tuple[str, int, int, str]]:
    """(tenant, partition, offset, event id) of every delivery in these files, in the order
    they happened (the worker stamps each batch with the time it wrote it)."""
    timed = []
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) == 5 and parts[4].isdigit():  # a kill -9 may cut the last line short
                timed.append((int(parts[4]), (parts[0], int(parts[1]), int(parts[2]), parts[3])))
    timed.sort(key=lambda t: t[0])  # stable: a file's own order is kept within a batch
    return [row for _, row in timed]


class Stream(threading.Thread):
    """Publishes events at a steady pace in the background."""

    def __init__(self, bootstrap: str, topic: str, count: int, tenants: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.events = list(EventFactory(tenants, seed=99).events(count))
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            began = time.monotonic()
            with Publisher(KafkaConfig(bootstrap_servers=self.bootstrap), self.topic) as pub:
                for i, event in enumerate(self.events):
                    pub.publish(event)
                    if i % 200 == 0:
                        delay = began + i / self.rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                assert pub.flush(60) == 0
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _wait_delivered(ids: set[str], files: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {row[3] for row in _deliveries(*files)}
        if ids <= got:
            return
        time.sleep(0.5)
    missing = ids - {row[3] for row in _deliveries(*files)}
    raise AssertionError(f"{len(missing)} events never delivered")


def _first_deliveries_in_order(rows: list[tuple[str, int, int, str]]) -> None:
    seen: set[str] = set()
    last: dict[tuple[str, int], int] = {}
    for tenant, partition, offset, event_id in rows:
        if event_id in seen:
            continue
        seen.add(event_id)
        key = (tenant, partition)
        assert offset > last.get(key, -1), f"tenant {tenant} out of order at offset {offset}"
        last[key] = offset


def test_kill_9_during_a_stream_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=6)
    stream = Stream(kafka_bootstrap, topics.events, 20_000, 60, rate=2500)
    stream.start()
    out = tmp_path / "delivered.tsv"
    rng = random.Random(7)
    for _ in range(3):
        proc = _start(kafka_bootstrap, topics, "proc-kill", out, "--delay", "0.002")
        _wait_ready(proc)
        time.sleep(rng.uniform(1.0, 2.5))
        proc.kill()  # SIGKILL: no drain, no commit
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    stream.join(120)
    assert stream.error is None
    final = _start(kafka_bootstrap, topics, "proc-kill", out)
    _wait_ready(final)
    ids = {e["event_id"] for e in stream.events}
    _wait_delivered(ids, [out])
    assert _stop(final) == 0
    rows = _deliveries(out)
    assert {r[3] for r in rows} == ids
    _first_deliveries_in_order(rows)
    duplicates = len(rows) - len(ids)
    _log.warning("kill -9 x3 over 20000 events: %d duplicate deliveries", duplicates)


def test_a_second_process_joins_and_leaves_mid_stream(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=6)
    # 12 s of events: the second process must join (a rebalance, slower on a loaded machine)
    # while they still come, or it has nothing to receive.
    stream = Stream(kafka_bootstrap, topics.events, 24_000, 50, rate=2000)
    out_a, out_b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a = _start(kafka_bootstrap, topics, "proc-rebalance", out_a, "--delay", "0.002")
    _wait_ready(a)
    stream.start()
    time.sleep(1.5)
    b = _start(kafka_bootstrap, topics, "proc-rebalance", out_b, "--delay", "0.002")
    _wait_ready(b)
    deadline = time.monotonic() + 60
    while not _deliveries(out_b) and time.monotonic() < deadline:
        time.sleep(0.2)  # the cooperative rebalance hands b some partitions
    time.sleep(1.0)
    assert _stop(b) == 0  # leaves the group: its partitions go back to a
    stream.join(120)
    assert stream.error is None
    ids = {e["event_id"] for e in stream.events}
    _wait_delivered(ids, [out_a, out_b])
    assert _stop(a) == 0
    rows_a, rows_b = _deliveries(out_a), _deliveries(out_b)
    assert rows_b, "the second process received partitions"
    assert {r[3] for r in rows_a + rows_b} == ids
    _first_deliveries_in_order(_deliveries(out_a, out_b))  # both processes, in time order


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback test
        return str(response.read().decode())


def _committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in tps}


def test_sigterm_drains_commits_and_exits_0(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=3)
    events = list(EventFactory(20, seed=4).events(3000))
    with Publisher(KafkaConfig(bootstrap_servers=kafka_bootstrap), topics.events) as pub:
        for e in events:
            pub.publish(e)
    out = tmp_path / "first.tsv"
    # A slow destination: plenty is queued and in flight when SIGTERM arrives.
    port = _free_port()
    proc = _start(
        kafka_bootstrap,
        topics,
        "proc-term",
        out,
        "--delay",
        "0.05",
        "--batch",
        "5",
        "--ops-port",
        str(port),
    )
    _wait_ready(proc)
    time.sleep(1.0)
    # The operability endpoints of the running process.
    ready = json.loads(_get(f"http://127.0.0.1:{port}/readyz"))
    assert ready["ready"] is True and ready["partitions"] == [0, 1, 2]
    assert json.loads(_get(f"http://127.0.0.1:{port}/healthz"))["status"] == "ok"
    metrics = _get(f"http://127.0.0.1:{port}/metrics")
    assert 'siem_export_delivered_total{connector="worker"}' in metrics
    assert 'siem_export_partition_lag{connector="worker"' in metrics
    began = time.monotonic()
    assert _stop(proc) == 0
    assert time.monotonic() - began < 30
    first = _deliveries(out)
    assert first, "some events were delivered before SIGTERM"
    committed = _committed(kafka_bootstrap, topics.events, "proc-term", 3)
    by_partition: dict[int, set[int]] = defaultdict(set)
    for _, partition, offset, _ in first:
        by_partition[partition].add(offset)
    for partition, offset in committed.items():
        # Everything below the commit was delivered: the commit never passes a failure.
        assert set(range(max(offset, 0))) <= by_partition[partition]
    # A restart delivers the rest, and nothing the first run acknowledged again.
    out2 = tmp_path / "second.tsv"
    again = _start(kafka_bootstrap, topics, "proc-term", out2)
    _wait_ready(again)
    ids = {e["event_id"] for e in events}
    _wait_delivered(ids, [out, out2])
    assert _stop(again) == 0
    second = _deliveries(out2)
    assert not {r[3] for r in first} & {r[3] for r in second}


def test_second_signal_exits_at_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    with Publisher(KafkaConfig(bootstrap_servers=kafka_bootstrap), topics.events) as pub:
        for e in EventFactory(2, seed=3).events(200):
            pub.publish(e)
    fail_file = tmp_path / "failing"
    fail_file.write_text("".join(f"{t.tenant_id}\n" for t in EventFactory(2, seed=3).tenants))
    out = tmp_path / "out.tsv"
    proc = _start(
        kafka_bootstrap, topics, "proc-2sig", out, "--fail-file", str(fail_file), "--grace", "120"
    )
    _wait_ready(proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)  # would wait up to 120 s for the failing lanes
    time.sleep(0.5)
    began = time.monotonic()
    assert _stop(proc, signal.SIGINT) == 0
    assert time.monotonic() - began < 15
    assert not out.exists() or out.read_text() == ""
    assert _committed(kafka_bootstrap, topics.events, "proc-2sig", 1)[0] <= 0
    assert os.path.exists(fail_file)
