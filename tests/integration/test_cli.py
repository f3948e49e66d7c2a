"""The command line against the real broker: topics create, generate, and the README's demo."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.config import KafkaConfig
from streams.tail import read_records

pytestmark = pytest.mark.integration


def _run(
    args: list[str],
    bootstrap: str | None,
    cwd: Path | None = None,
    timeout: float = 180,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIEM_EXPORT_")}
    env.update(extra_env or {})
    if bootstrap:
        env["SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "connectors", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_topics_create_is_idempotent(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:6]
    env_topics = {
        "SIEM_EXPORT_TOPICS__EVENTS": f"cli{suffix}.events",
        "SIEM_EXPORT_TOPICS__DLQ": f"cli{suffix}.dlq",
        "SIEM_EXPORT_TOPICS__ALERTS": f"cli{suffix}.alerts",
        "SIEM_EXPORT_TOPICS__CONFIG": f"cli{suffix}.config",
    }
    first = _run(["topics", "create"], kafka_bootstrap, extra_env=env_topics)
    assert first.returncode == 0, first.stderr
    assert f"created  cli{suffix}.events (12 partitions)" in first.stdout
    assert f"cli{suffix}.config" in first.stdout
    second = _run(["topics", "create"], kafka_bootstrap, extra_env=env_topics)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("exists") == 4


def test_generate_is_deterministic_with_a_seed(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = [f"gen-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for f in admin.create_topics([NewTopic(t, 3, 1) for t in topics]).values():
        f.result(timeout=30)
    for topic in topics:
        proc = _run(
            ["generate", "--count", "400", "--tenants", "6", "--seed", "11", "--topic", topic],
            kafka_bootstrap,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"published 400 events for 6 tenants to {topic} in ")
        assert "events/s)" in proc.stdout
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    runs = []
    for topic in topics:
        records = list(read_records(kafka, topic, idle_timeout=10))
        assert len(records) == 400
        assert all(r.error is None for r in records)
        runs.append(sorted((r.event for r in records), key=lambda e: e["event_id"] if e else ""))
    assert runs[0] == runs[1]
    categories = {e["action"].split(".")[0] for e in runs[0] if e}
    assert len(categories) >= 7  # 400 events nearly always touch every category


def test_generate_with_rate_shows_progress(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = f"rate-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    proc = _run(
        ["generate", "-n", "60", "-t", "2", "--rate", "40", "--topic", topic], kafka_bootstrap
    )
    assert proc.returncode == 0, proc.stderr
    assert "generate: " in proc.stderr  # progress lines while it runs (≈1.5 s at 40/s)
    assert "published 60 events" in proc.stdout


def test_generate_against_missing_broker_fails_with_a_message() -> None:
    proc = _run(["generate", "-n", "1", "--topic", "x"], "127.0.0.1:1", timeout=120)
    assert proc.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_to_a_missing_topic_says_so(kafka_bootstrap: str) -> None:
    proc = _run(["generate", "-n", "1", "--topic", "no.such.topic"], kafka_bootstrap)
    assert proc.returncode == 1
    assert "topic 'no.such.topic' does not exist" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_demo_runs_end_to_end(tmp_path: Path, kafka_lib_dir: Path) -> None:
    proc = _run(
        ["demo", "--count", "300", "--tenants", "4", "--port", str(_free_port())],
        None,
        cwd=tmp_path,
        timeout=270,  # under pytest's 300 s; a loaded 2-core machine needs about 2 minutes
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "300 delivered" in out
    assert "300 events of this run read back from the topic, 4 tenants, 0 undecodable" in out
    step4, _, step5 = out.partition("5. Webhook delivery")
    step5, _, step6 = step5.partition("6. Syslog forwarding")
    step6, _, step7 = step6.partition("7. Cloud storage")
    step7, _, step8 = step7.partition("8. REST API")
    assert step8, out
    assert step4.count('{"event_id":"evt_') == 3
    # The real connector process delivered every event, signed and in order, then stopped.
    assert "300 of 300 events arrived" in step5
    assert "connector stopped with exit code 0" in step5
    assert "4 tenants, 4 received in partition order; 0 duplicates; 0 bad signatures" in step5
    assert "webhook-signature: v1," in step5
    # The real syslog connector forwarded every event, in order, to a private rsyslogd.
    assert "300 of 300 events arrived at rsyslog in 300 lines" in step6
    assert "connector stopped with exit code 0" in step6
    assert "4 tenants, 4 received in partition order; 0 duplicates; 0 unreadable lines" in step6
    shown = [line for line in step6.splitlines() if line.startswith("   <")]
    assert len(shown) == 3
    for line in shown:  # verbatim RFC 5424, as rsyslog received it
        assert " zaita siem-export - " in line and '[audit@32473 event_id="evt_' in line
    assert "syslog_messages_total=300" in step6
    rsyslogd_pid = int(step6.split("(pid ", 1)[1].split(")", 1)[0])
    assert not Path(f"/proc/{rsyslogd_pid}").exists()  # stopped, not left behind
    _assert_storage_step(step7)
    _assert_api_step(step8, out)
    assert "Stopped the broker" in out
    status = _run(["kafka", "status"], None, cwd=tmp_path)
    assert status.returncode == 3


def _per_tenant(step: str) -> dict[str, int]:
    listed = step.split("per tenant: ", 1)[1].splitlines()[0]
    return {t: int(n) for t, _, n in (item.partition("=") for item in listed.split(", "))}


def _assert_storage_step(step7: str) -> None:
    """The real storage connector wrote every event once, in order, into SeaweedFS objects."""
    assert "300 of 300 events written in " in step7
    assert "connector stopped with exit code 0" in step7
    objects = re.findall(
        r"^   audit/tenant_id=(tnt_\w+)/date=\d{4}-\d\d-\d\d/hour=\d\d/\1-\d+-\d+\.jsonl\.gz"
        r" +(\d+) bytes +(\d+) events$",
        step7,
        re.MULTILINE,
    )
    assert len({tenant for tenant, _, _ in objects}) == 4, step7  # Hive-style keys, each tenant
    assert all(int(size) > 0 and int(count) > 0 for _, size, count in objects)
    meta = re.search(
        r"metadata of audit/\S+: eventcount=(\d+), firstoffset=(\d+), lastoffset=(\d+), "
        r"schemaversion=\d+, sha256=[0-9a-f]{64}; matches the content: (\d+) JSON lines",
        step7,
    )
    assert meta is not None, step7
    assert meta[1] == meta[4] and int(meta[2]) <= int(meta[3])
    assert (
        "4 tenants, 4 received in partition order; 0 duplicates; "
        "0 objects whose metadata does not match their content" in step7
    )
    assert sum(_per_tenant(step7).values()) == 300
    weed_pid = int(step7.split("(weed mini, pid ", 1)[1].split(")", 1)[0])
    assert not Path(f"/proc/{weed_pid}").exists()  # SeaweedFS stopped, not left behind


def _assert_api_step(step8: str, out: str) -> None:
    """The real index stored every event; serve answered curl with one tenant's events only."""
    assert "300 of 300 events indexed" in step8
    assert (
        "4 tenants, 4 received in partition order; 0 duplicates; "
        "0 rows whose stored JSON is not theirs" in step8
    )
    assert sum(_per_tenant(step8).values()) == 300
    account = re.search(r"accounts create --tenant (tnt_\w+) --scope audit:read .*"
                        r"token: zse_\S{4}… \(printed once", step8)  # fmt: skip
    assert account is not None, step8
    tenant = account[1]
    assert not re.search(r"zse_[A-Za-z0-9_-]{5}", out)  # the token is never shown in full
    lines = step8.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("   $ curl "))
    command = lines[at]
    assert '-H "Authorization: Bearer zse_' in command and '…"' in command
    category = re.search(r"/v1/audit-events\?category=(\w+)&start=\S+&limit=3\"$", command)
    assert category is not None, command
    page = json.loads(lines[at + 1])  # curl's output, verbatim
    assert 1 <= len(page["data"]) <= 3 and page["next_cursor"]
    for event in page["data"]:
        assert event["tenant_id"] == tenant
        assert event["action"].split(".", 1)[0] == category[1]
    by_time = re.search(
        r"with that token: (\d+) events in \d+ pages, 0 duplicates, 0 other tenants; "
        r"(tnt_\w+) published (\d+) in this run",
        step8,
    )
    assert by_time is not None, step8
    assert by_time[2] == tenant and by_time[1] == by_time[3] == str(_per_tenant(step8)[tenant])
    assert re.search(
        rf"order=ingestion \(for pollers\): {by_time[1]} events in \d+ pages, the last one "
        r"empty \(caught up\); in partition order",
        step8,
    )
    assert "siem-export serve stopped with exit code 0" in step8
