"""The development broker (streams.devbroker and ``siem-export kafka``) against real Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams import devbroker
from streams.devbroker_jars import (
    KAFKA_VERSION,
    LOG4J_CONFIG,
    MARKER_NAME,
    POM_PATH,
    cache_dir,
    ensure_jars,
)
from streams.errors import ToolMissingError

pytestmark = pytest.mark.integration

CLI = "from connectors.cli import main; main()"
OFFSET_BEGINNING = -2
Record = tuple[bytes | None, bytes | None]


def _cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-c", CLI, "kafka", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0


def _read(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Record]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return got


def _exited(pid: int) -> bool:
    """True if ``pid`` is gone or a zombie (init reaps orphans a little later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_pom_pins_the_module_version_and_every_dependency() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(POM_PATH).getroot()  # noqa: S314 - our own file
    assert pom.findtext("m:properties/m:kafka.version", namespaces=ns) == KAFKA_VERSION
    versions = [d.findtext("m:version", namespaces=ns) for d in pom.iterfind(".//m:dependency", ns)]
    assert versions and all(v and not v.startswith(("[", "(")) for v in versions)


def test_jars_are_cached_and_a_second_fetch_needs_no_mvn(
    kafka_lib_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (cache_dir() / MARKER_NAME).is_file()
    assert (kafka_lib_dir / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert (kafka_lib_dir / f"kafka-tools-{KAFKA_VERSION}.jar").is_file()
    monkeypatch.setenv("PATH", str(tmp_path))  # neither mvn nor anything else
    started = time.monotonic()
    assert ensure_jars() == kafka_lib_dir
    assert time.monotonic() - started < 1.0


def test_an_interrupted_fetch_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEM_EXPORT_KAFKA_CACHE", str(tmp_path / "cache"))
    partial = tmp_path / "cache" / f"kafka-{KAFKA_VERSION}" / "lib"
    partial.mkdir(parents=True)
    (partial / "half-copied.jar").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))  # no marker, so it must call mvn: missing here
    with pytest.raises(ToolMissingError, match=r"^mvn not found: install Apache Maven"):
        ensure_jars()


def test_missing_java_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    result = _cli("up", "--data-dir", str(tmp_path / "kafka"), path=str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "java not found: install a Java 17+ runtime" in lines[0]
    assert "openjdk-17-jre-headless" in lines[0]


def test_up_down_up_keeps_data_then_status_and_down(kafka_lib_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    topic, key, value = "devbroker-restart", b"tenant-1", b"survives a restart"
    try:
        first = _cli("up", "--data-dir", str(data_dir))
        assert first.returncode == 0, first.stderr
        bootstrap = first.stdout.strip()
        assert bootstrap.startswith("127.0.0.1:")
        cluster_id = (
            AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).cluster_id
        )
        _create_topic(bootstrap, topic)
        _produce(bootstrap, topic, key, value)
        assert _read(bootstrap, topic, 1) == [(key, value)]

        again = _cli("up", "--data-dir", str(data_dir))
        assert again.returncode == 0 and again.stdout.strip() == bootstrap
        assert "already running" in again.stderr

        assert _cli("down", "--data-dir", str(data_dir)).returncode == 0
        assert _cli("status", "--data-dir", str(data_dir)).returncode == 3

        second = _cli("up", "--data-dir", str(data_dir))
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == bootstrap  # same recorded port
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert metadata.cluster_id == cluster_id
        assert topic in metadata.topics
        assert _read(bootstrap, topic, 1) == [(key, value)]

        running = _cli("status", "--data-dir", str(data_dir))
        assert running.returncode == 0 and bootstrap in running.stdout

        pid = devbroker.status(data_dir).pid
        assert pid is not None
        assert _cli("down", "--data-dir", str(data_dir)).returncode == 0
        assert _exited(pid)
        stopped = _cli("status", "--data-dir", str(data_dir))
        assert stopped.returncode == 3, stopped.stdout
        assert _cli("down", "--data-dir", str(data_dir)).returncode == 0  # idempotent
    finally:
        devbroker.down(data_dir)


def test_session_broker_and_java_tools(
    kafka_bootstrap: str, kafka_lib_dir: Path, tmp_path: Path
) -> None:
    topic = f"devbroker-tools-{uuid.uuid4().hex[:8]}"
    _create_topic(kafka_bootstrap, topic)
    lines = [f"key-{n}\tvalue-{n}" for n in range(3)]
    result = subprocess.run(
        [
            "java",
            "-Xmx256m",
            "-cp",
            f"{kafka_lib_dir}/*",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={tmp_path}",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            kafka_bootstrap,
            "--topic",
            topic,
            "--reader-property",
            "parse.key=true",
        ],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    expected = [(f"key-{n}".encode(), f"value-{n}".encode()) for n in range(3)]
    assert _read(kafka_bootstrap, topic, 3) == expected
