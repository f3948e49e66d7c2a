"""``siem-export serve`` as customers meet it: a real process, store and broker, and schemathesis.

One module-scoped setup: a SQLite store seeded with two tenants' events, machine accounts made
with ``siem-export accounts create``, the API started with ``siem-export serve`` on a free port
and publishing its authentication events to a fresh topic of the session's Kafka broker.

* schemathesis (its CLI, in a subprocess, bounded: 50 examples per operation, fixed seed, a
  timeout) runs the OpenAPI document's operations with a valid token and must find no server
  error and no response that breaks the document (status codes, content types, headers,
  bodies), and see invalid input refused;
* the authentication events arrive on the topic, attributed to the account's tenant;
* ``accounts list`` never shows a token, ``accounts revoke`` stops one at the next request,
  and the use of the revoked token is published to the account's tenant;
* SIGTERM stops the server with exit code 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from connectors.index.store import open_store
from streams.config import KafkaConfig
from streams.event import AuditEvent
from streams.tail import read_records
from tests.api_support import TENANT_A, TENANT_B, event, indexed

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
    )
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    base: str
    env: dict[str, str]
    topic: str
    kafka: KafkaConfig
    tokens: dict[str, str]
    accounts: dict[str, str]
    process: subprocess.Popen[str]
    log: Path


def _cli(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connectors", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _create(env: dict[str, str], tenant: str, scope: str) -> tuple[str, str]:
    proc = _cli(["accounts", "create", "--tenant", tenant, "--scope", scope, "--name", "t"], env)
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert re.fullmatch(r"zse_[A-Za-z0-9_-]{43}", fields["token"])
    assert "shown only this once" in proc.stderr
    return fields["account_id"], fields["token"]


async def _seed(url: str) -> None:
    now_ms = int(time.time() * 1000)
    store = open_store(url)
    try:
        await store.migrate()
        rows = []
        for i in range(300):
            # Within the default window (the last 24 hours), many sharing a timestamp.
            ts = now_ms - 3_600_000 + (i // 5) * 1000
            rows.append(indexed(event(TENANT_A, f"evt_a{i:04d}", ts, actor_id=f"usr_{i % 7}")))
            rows.append(indexed(event(TENANT_B, f"evt_b{i:04d}", ts)))
        await store.insert(rows)
    finally:
        await store.close()


def _wait_for_port(port: int, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"serve did not listen within 60 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("api")
    topic = f"api-{uuid.uuid4().hex[:8]}.events"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    url = f"sqlite://{tmp / 'audit.db'}"
    asyncio.run(_seed(url))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIEM_EXPORT_")}
    env.update(
        {
            "SIEM_EXPORT_STORE__URL": url,
            "SIEM_EXPORT_API__CURSOR_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
            "SIEM_EXPORT_API__RATE_PER_SECOND": "100000",
            "SIEM_EXPORT_API__BURST": "100000",
            "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "SIEM_EXPORT_TOPICS__EVENTS": topic,
            "SIEM_EXPORT_OPS__PORT": str(_free_port()),
        }
    )
    accounts, tokens = {}, {}
    for key, tenant, scope in (
        ("reader", TENANT_A, "audit:read"),
        ("admin", TENANT_A, "siem:admin"),
        ("b", TENANT_B, "audit:read"),
    ):
        accounts[key], tokens[key] = _create(env, tenant, scope)
    log = tmp / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "connectors", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _wait_for_port(port, process, log)
        yield Served(
            f"http://127.0.0.1:{port}",
            env,
            topic,
            KafkaConfig(bootstrap_servers=kafka_bootstrap),
            tokens,
            accounts,
            process,
            log,
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _get(served: Served, path: str, token: str | None) -> int:
    request = urllib.request.Request(served.base + path)  # noqa: S310 - our own test server
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _schemathesis(
    served: Served, report: Path, *, mode: str, checks: str, hooks: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{served.base}/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {served.tokens['reader']}",
            "--checks",
            checks,
            "--mode",
            mode,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "50",
            "--seed",
            "20260315",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--report",
            "junit,ndjson",
            "--report-junit-path",
            str(report / "junit.xml"),
            "--report-ndjson-path",
            str(report / "events.ndjson"),
        ],
        env={**served.env, "SCHEMATHESIS_HOOKS": hooks, "NO_COLOR": "1"},
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )


def _assert_clean(proc: subprocess.CompletedProcess[str], report: Path) -> None:
    summary = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, summary
    # Both data operations were tested (schemathesis leaves out the document's own URL).
    junit = (report / "junit.xml").read_text()
    assert 'failures="0"' in junit and 'errors="0"' in junit, junit
    for operation in ("GET /v1/audit-events", "GET /v1/audit-events/{event_id}"):
        assert f'<testcase name="{operation}"' in junit, junit
    assert re.search(r"Test cases:\s+(\d{3,}) generated", proc.stdout), summary


def _statuses(report: Path) -> dict[int, int]:
    """How many responses of each status the run received (from its NDJSON report)."""
    counts: dict[int, int] = {}
    for status in re.findall(r'"status_code":\s*(\d{3})', (report / "events.ndjson").read_text()):
        counts[int(status)] = counts.get(int(status), 0) + 1
    return counts


@pytest.mark.timeout(480)  # two bounded schemathesis runs (about 15 s each here)
def test_schemathesis_finds_no_server_error_and_no_broken_response(
    served: Served, tmp_path: Path
) -> None:
    # Every kind of data, valid and invalid: errors must be documented problems.
    full = tmp_path / "full"
    full.mkdir()
    _assert_clean(_schemathesis(served, full, mode="all", checks=CHECKS), full)
    assert _statuses(full).get(400, 0) > 50
    # Valid data without generated cursors: the store is queried and its pages checked.
    positive = tmp_path / "positive"
    positive.mkdir()
    checks = CHECKS.replace(",negative_data_rejection", "")
    proc = _schemathesis(
        served, positive, mode="positive", checks=checks, hooks="tests.schemathesis_hooks"
    )
    _assert_clean(proc, positive)
    assert _statuses(positive).get(200, 0) > 50, _statuses(positive)
    assert served.process.poll() is None, served.log.read_text()


def test_authentications_are_published_to_the_tenant(served: Served) -> None:
    assert _get(served, "/v1/audit-events?limit=1", served.tokens["reader"]) == 200
    assert _get(served, "/v1/audit-events?limit=1", served.tokens["admin"]) == 403
    assert _get(served, "/v1/audit-events?limit=1", "zse_" + "A" * 43) == 401
    deadline = time.monotonic() + 60
    found: dict[tuple[str, str], set[str]] = {}
    while time.monotonic() < deadline:
        found = {}
        for record in read_records(served.kafka, served.topic, idle_timeout=5):
            assert record.error is None
            assert record.event is not None
            ev = record.event
            key = (ev["action"], ev["outcome"])
            found.setdefault(key, set()).add(ev["actor"]["id"])
            assert ev["tenant_id"] == TENANT_A or ev["actor"]["id"] == served.accounts["b"]
            assert ev["metadata"]["service"] == "siem-export-api"
        if ("machine_account.api_auth", "denied") in found:
            break
        time.sleep(1)
    assert served.accounts["reader"] in found[("machine_account.api_auth", "success")]
    assert found[("machine_account.api_auth", "denied")] == {served.accounts["admin"]}
    # The unknown token had no tenant to be published to.
    assert ("machine_account.api_auth_failed", "failure") not in found


def test_accounts_list_and_revoke(served: Served) -> None:
    listed = _cli(["accounts", "list", "--tenant", TENANT_A], served.env)
    assert listed.returncode == 0, listed.stderr
    assert served.accounts["reader"] in listed.stdout
    assert served.accounts["b"] not in listed.stdout
    assert "zse_" not in listed.stdout
    _, token = _create(served.env, TENANT_A, "audit:read")
    account_id = _cli(["accounts", "list"], served.env).stdout.splitlines()[-1].split("\t")[0]
    assert _get(served, "/v1/audit-events/evt_a0001", token) == 200
    revoked = _cli(["accounts", "revoke", account_id], served.env)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked {account_id}")
    assert _get(served, "/v1/audit-events/evt_a0001", token) == 401
    # The use of the revoked token is in the audit log of the account's tenant, once.
    [failed] = _published(
        served,
        lambda ev: (
            ev["action"] == "machine_account.api_auth_failed" and ev["actor"]["id"] == account_id
        ),
    )
    assert failed["tenant_id"] == TENANT_A
    assert failed["resource"] == {"type": "machine_account", "id": account_id, "name": None}
    assert (failed["outcome"], failed["metadata"]["reason"]) == ("failure", "revoked_token")
    again = _cli(["accounts", "revoke", account_id], served.env)
    assert again.returncode == 1
    assert "no active account" in again.stderr
    bad = _cli(
        ["accounts", "create", "--tenant", "bad tenant", "--scope", "audit:read"], served.env
    )
    assert bad.returncode == 2
    unknown_scope = _cli(
        ["accounts", "create", "--tenant", "t1", "--scope", "audit:write"], served.env
    )
    assert unknown_scope.returncode == 2


def _published(served: Served, wanted: Callable[[AuditEvent], bool]) -> list[AuditEvent]:
    """The events on the topic that ``wanted`` picks, once there is one (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        found = []
        for record in read_records(served.kafka, served.topic, idle_timeout=5):
            assert record.event is not None
            if wanted(record.event):
                found.append(record.event)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_serve_without_a_cursor_secret_exits_2(served: Served) -> None:
    env = {k: v for k, v in served.env.items() if k != "SIEM_EXPORT_API__CURSOR_SECRET"}
    proc = _cli(["serve", "--port", str(_free_port())], env, timeout=30)
    assert proc.returncode == 2
    assert "SIEM_EXPORT_API__CURSOR_SECRET" in proc.stderr


def test_sigterm_stops_the_server_cleanly(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0, served.log.read_text()
    assert "API stopped." in served.log.read_text()
