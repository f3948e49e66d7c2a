"""Index connector and REST API on SQLite and PostgreSQL: ingestion events/s vs the raw ceiling,
and the latency of filtered page queries on millions of stored events.

    .venv/bin/python bench/query.py [--count 200000] [--tenants 100] [--partitions 12]
                                    [--stored 5000000] [--stored-tenants 1000]
                                    [--queries 200] [--query-seconds 150]
                                    [--stores sqlite,postgresql] [--phases ingest,query]
                                    [--connector-env SIEM_EXPORT_X=VALUE ...]
                                    [--bootstrap HOST:PORT]

PostgreSQL is a private cluster started the way the tests start it (tests/postgres_support.py:
Debian's binaries, initdb in a temporary directory, a free port on 127.0.0.1, trust for the
superuser ``siem``), except for its settings: the tests switch durability off (fsync,
synchronous_commit, full_page_writes) and keep shared_buffers at 64 MB; here durability is on,
as production runs it, and shared_buffers is 1 GB. SQLite is a file in this run's temporary
directory, with the store's own settings (WAL, synchronous=FULL).

(1) publish N events (--count) of --tenants tenants to a fresh --partitions topic with the real
    publisher; (2) ceiling: a bare consumer decodes every record and encodes it to JSON.
(3) ingest, per store: ``python -m connectors run index`` as production runs it, in a child
    process configured only by SIEM_EXPORT_* variables (SIEM_EXPORT_STORE__URL=sqlite:///… or
    postgresql://… of a fresh, empty database; a fresh consumer group; its ops endpoints on a
    free port). The clock runs from /readyz until /metrics shows every event delivered
    (siem_export_delivered_total == N: the index acknowledges an event once the transaction
    holding it committed). Then SIGTERM, and the store is read back: N rows, each event id
    once, each tenant's ingestion sequences 1..n in publish order.
(4) query, per store: --stored events (default 5,000,000) of --stored-tenants tenants over the
    last 30 days. They are NOT loaded through Kafka (5 million events through the index would
    take far too long here): a pool of up to 100,000 realistic synthetic events
    (streams.synthetic.EventFactory, validated and encoded exactly as delivered) is drawn
    from at random, each stored event a pool event with a fresh event id and its own
    timestamp (evenly spread, in ingestion order), the body re-encoded to match; one row in
    50,000 is decoded again and checked against its columns. The bulk load goes through the
    store's schema (``open_store(url).migrate()``) and then a direct connection: the secondary
    indexes of audit_events are dropped, the rows written in 100,000-row transactions
    (SQLite: executemany, synchronous=OFF; PostgreSQL: COPY) with each
    tenant's sequences and counter row as the store assigns them, and the indexes rebuilt
    from their own definitions (sqlite_master, pg_indexes). PostgreSQL then gets VACUUM
    ANALYZE (what autovacuum does to a grown table); SQLite gets no ANALYZE, as the store
    never runs one. The last 20,000 events go through ``AuditStore.insert`` in 5,000-row
    transactions (the index sink's path and largest group commit), which shows that path's
    rate at full size and that the bulk-loaded counters are right; then the whole store is
    checked (row count, every tenant's sequences dense and equal to its counter).
    Then ``python -m connectors accounts create --tenant T --scope audit:read`` makes a
    machine account for each of two tenants, the largest (~6% of the events with 1,000
    tenants) and the 100th largest (~0.2%), and ``python -m connectors serve`` (child process,
    127.0.0.1, a random cursor secret, rate limit raised to 100,000/s so it does not throttle
    the benchmark, authentication events published to a topic of this run) answers queries
    over HTTP with each Bearer token, one at a time over one keep-alive connection, kinds
    interleaved, after warm-up rounds; the default page size (100). Kinds: no filter (the
    API's default window, the last 24 h), a random 1-day range, and over the whole 30 days
    (``start`` only): action exact, ``certificate.*``, category, actor_id, outcome (failure or
    denied), resource_type+resource_id, source_ip; page 2 of a 1-day range through
    next_cursor; order=ingestion walked page by page with next_cursor. Values come from the
    tenant's own events. Every response is checked: 200, only the tenant's events, each
    matching the filter, in order. Latency is the client's (request written to body read) and
    includes the API's own work per request (token lookup, authentication event, cursor
    signing). The access path each store chooses for each kind and tenant is shown (EXPLAIN of
    the statement the store runs).

The machine has 2 cores shared by the Kafka broker (JVM), PostgreSQL, the connector or API
process and this script: figures are noisy. The whole run aborts past 30 minutes; every child
process (the connector, the API, PostgreSQL, the broker if this script started it) is stopped
on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import platform
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, not installed

import _common  # noqa: E402
import orjson  # noqa: E402
import psycopg  # noqa: E402
from multidict import MultiDict  # noqa: E402
from psycopg import sql  # noqa: E402

from connectors.api.config import ApiSettings  # noqa: E402
from connectors.api.params import parse_list_query  # noqa: E402
from connectors.index.model import IndexedEvent  # noqa: E402
from connectors.index.query import (  # noqa: E402
    Dialect,
    Statement,
    page_by_sequence,
    page_by_time,
)
from connectors.index.store import open_store  # noqa: E402
from streams.config import KafkaConfig, TopicsConfig  # noqa: E402
from streams.event import (  # noqa: E402
    format_timestamp,
    parse_timestamp,
    to_json_bytes,
    validate_event,
)
from streams.synthetic import EventFactory  # noqa: E402
from tests.postgres_support import PostgresCluster  # noqa: E402

HOST = "127.0.0.1"
TIME_LIMIT_SECONDS = 30 * 60
STALL_SECONDS = 60.0  # ingestion fails when nothing is delivered for this long
POLL_SECONDS = 0.1
DAY_MS = 86_400_000
SPAN_MS = 30 * DAY_MS  # the stored events cover the last 30 days (the API allows 31 a request)
POOL_SIZE = 100_000  # distinct synthetic events the stored ones are drawn from
BULK_BATCH = 100_000  # rows per bulk-load transaction
TAIL_ROWS = 20_000  # the last stored events, written through AuditStore.insert
TAIL_BATCH = 5_000  # the index sink's largest group commit (connectors/index/sink.py)
CHECK_EVERY = 50_000  # one generated row in this many is decoded and checked
PROFILE_SAMPLE = 10_000  # rows of a query tenant kept to draw query parameters from
# The tenants queried, by size rank among the stored tenants (EventFactory: a few large tenants,
# a long tail): the largest (~6% of the events with 1,000 tenants) and a typical one (~0.2%).
QUERY_TENANTS = ((0, "largest tenant"), (99, "100th largest tenant"))
WARMUP_ROUNDS = 10
PAGE = 100  # the API's default limit
# The test harness's cluster turns durability off; production keeps it on (and has more than
# the harness's 64 MB of shared buffers).
PRODUCTION_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "1GB",
}
COLUMNS = (
    "tenant_id, event_id, sequence, timestamp_ms, action, category, actor_id, actor_type, "
    "resource_type, resource_id, outcome, source_ip, body"
)
INDEX_METRICS = ("siem_export_index_", "siem_export_consumed")
INDEX_MEANS = {
    "siem_export_index_transaction_seconds": "mean insert transaction",
    **_common.DELIVERY_LATENCY_MEAN,
}
_STORES = ("sqlite", "postgresql")
_PHASES = ("ingest", "query")
# The delivered JSON starts {"event_id":"…","timestamp":"…","tenant_id": (streams.event).
_HEAD = b'{"event_id":"'
_MID = b'","timestamp":"'
_AFTER_TIMESTAMP = b'","tenant_id":'

# One audit_events row in COLUMNS order.
Row = tuple[str, str, int, int, str, str, str, str, str, str, str, str | None, bytes]


class PhaseFailed(Exception):
    """One phase could not finish (the others still run)."""


# --- the stores ----------------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (PostgreSQL's backends)."""
    total = _common.process_cpu(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                total += _common.process_cpu(int(entry.name))
    return total


@dataclass(frozen=True)
class BulkLoad:
    """What a bulk load did (seconds of this store's work; generation is timed apart)."""

    rows: int
    write_seconds: float
    index_seconds: float
    indexes: int
    after_seconds: float  # VACUUM ANALYZE (PostgreSQL), checkpoint (SQLite)


class SqliteTarget:
    """SQLite files in this run's directory, read and bulk-loaded through sqlite3."""

    name = "sqlite"
    dialect: Dialect = "sqlite"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def describe(self) -> str:
        return (
            f"SQLite {sqlite3.sqlite_version} (Python's sqlite3), a file in {self.tmp}; the "
            "store's settings: WAL, synchronous=FULL"
        )

    def new_url(self, label: str) -> str:
        return f"sqlite://{self.tmp / f'{label}.db'}"

    def _path(self, url: str) -> str:
        return url.removeprefix("sqlite://")

    def fetch(self, url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self._path(url))) as conn:
            return list(conn.execute(query, tuple(params)))

    def explain(self, url: str, statement: Statement) -> str:
        rows = self.fetch(url, "EXPLAIN QUERY PLAN " + statement.sql, statement.params)
        return "; ".join(str(r[3]) for r in rows)

    def size(self, url: str) -> str:
        path = Path(self._path(url))
        files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
        total = sum(p.stat().st_size for p in files)
        return f"{total / 2**30:.2f} GiB (the file and its WAL)"

    def bulk_load(
        self, url: str, batches: Iterator[list[Row]], counters: Callable[[], dict[str, int]]
    ) -> BulkLoad:
        conn = sqlite3.connect(self._path(url), isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("PRAGMA cache_size = -1048576")  # 1 GiB, for the index builds
            indexes = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'audit_events' AND sql IS NOT NULL"
            ).fetchall()
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            rows, written = 0, 0.0  # the store's time only: drawing the batches is not in it
            insert = f"INSERT INTO audit_events ({COLUMNS}) VALUES ({', '.join('?' * 13)})"  # noqa: S608 - fixed text
            for batch in batches:
                began = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(insert, batch)
                conn.execute("COMMIT")
                written += time.perf_counter() - began
                rows += len(batch)
            began = time.perf_counter()
            conn.executemany(
                "INSERT INTO tenant_sequences (tenant_id, last_sequence) VALUES (?, ?)",
                sorted(counters().items()),
            )
            written += time.perf_counter() - began
            began = time.perf_counter()
            for _, ddl in indexes:
                conn.execute(ddl)
            built = time.perf_counter() - began
            began = time.perf_counter()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return BulkLoad(rows, written, built, len(indexes), time.perf_counter() - began)
        finally:
            conn.close()


class PostgresTarget:
    """The private PostgreSQL cluster (tests/postgres_support.py), one database per use."""

    name = "postgresql"
    dialect: Dialect = "postgresql"

    def __init__(self) -> None:
        self.cluster = PostgresCluster(settings=PRODUCTION_SETTINGS)

    def __enter__(self) -> Self:
        self.cluster.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cluster.stop()

    @property
    def pid(self) -> int:
        """The postmaster's pid (first line of postmaster.pid)."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        return 0

    def describe(self) -> str:
        names = ("server_version", *PRODUCTION_SETTINGS)
        values = self.fetch(
            self.cluster.url(),
            "SELECT " + ", ".join(f"current_setting('{n}')" for n in names),
        )[0]
        settings = ", ".join(f"{n} {v}" for n, v in zip(names[1:], values[1:], strict=True))
        return (
            f"PostgreSQL {values[0]} at {HOST}:{self.cluster.port} (tests/postgres_support.py), "
            f"{settings}"
        )

    def new_url(self, label: str) -> str:
        return self.cluster.url(self.cluster.create_database())

    def fetch(self, url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            return list(conn.execute(query.encode(), tuple(params)).fetchall())

    def explain(self, url: str, statement: Statement) -> str:
        rows = self.fetch(url, "EXPLAIN (COSTS OFF) " + statement.sql, statement.params)
        return "; ".join(" ".join(str(r[0]).split()) for r in rows)

    def size(self, url: str) -> str:
        total, table, indexes = self.fetch(
            url,
            "SELECT pg_database_size(current_database()), pg_table_size('audit_events'), "
            "pg_indexes_size('audit_events')",
        )[0]
        return (
            f"{int(total) / 2**30:.2f} GiB (audit_events {int(table) / 2**30:.2f} GiB with "
            f"TOAST, its indexes {int(indexes) / 2**30:.2f} GiB)"
        )

    def bulk_load(
        self, url: str, batches: Iterator[list[Row]], counters: Callable[[], dict[str, int]]
    ) -> BulkLoad:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '512MB'")
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_events' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint "
                "WHERE conrelid = 'audit_events'::regclass)"
            ).fetchall()
            for name, _ in indexes:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            rows, written = 0, 0.0  # the store's time only: drawing the batches is not in it
            copy_sql = f"COPY audit_events ({COLUMNS}) FROM STDIN".encode()
            for batch in batches:
                began = time.perf_counter()
                with conn.transaction(), conn.cursor().copy(copy_sql) as copy:
                    for row in batch:
                        copy.write_row(row)
                written += time.perf_counter() - began
                rows += len(batch)
            began = time.perf_counter()
            last = counters()
            conn.execute(
                "INSERT INTO tenant_sequences (tenant_id, last_sequence) "
                "SELECT * FROM unnest(%s::text[], %s::bigint[])",
                (list(last), list(last.values())),
            )
            written += time.perf_counter() - began
            began = time.perf_counter()
            for _, ddl in indexes:
                conn.execute(str(ddl).encode())
            built = time.perf_counter() - began
            began = time.perf_counter()
            conn.execute("VACUUM ANALYZE audit_events")
            conn.execute("CHECKPOINT")
            after = time.perf_counter() - began
        return BulkLoad(rows, written, built, len(indexes), after)


# A store under test: how this script creates, bulk-loads, reads and measures one.
Target = SqliteTarget | PostgresTarget


def migrate(url: str) -> int:
    """The store's own schema: ``open_store(url).migrate()``; its version."""

    async def run() -> int:
        store = open_store(url)
        try:
            return await store.migrate()
        finally:
            await store.close()

    return asyncio.run(run())


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any SIEM_EXPORT_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIEM_EXPORT_")}
    return env | {"PYTHONUNBUFFERED": "1", "SIEM_EXPORT_LOG_LEVEL": "WARNING"} | extra


# --- ingestion -----------------------------------------------------------------------------------


class IndexConnector(_common.ConnectorProcess):
    """``siem-export run index`` into the store at ``url`` (see ConnectorProcess; the
    destinations file it writes is not read by the index)."""

    def __init__(self, setup: Setup, topics: TopicsConfig, url: str) -> None:
        super().__init__(
            "index",
            setup.kafka,
            topics,
            setup.tmp,
            {},
            {"SIEM_EXPORT_STORE__URL": url} | setup.connector_env,
            metrics_of=INDEX_METRICS,
        )


@dataclass(frozen=True)
class Ingest:
    """The index connector from readiness to every event delivered, and the store read back."""

    rate: _common.Rate
    rate_from_launch: _common.Rate
    ready_seconds: float
    cpu: str
    metrics: dict[str, float]
    stop_seconds: float
    exit_code: int | None
    check: _common.Check
    bad_sequences: int  # tenants whose sequences are not 1..n
    logs: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.check.ok and not self.check.duplicates and not self.bad_sequences


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds so far of the connector, of PostgreSQL (server and backends) and of the
    machine; taken while the connector runs (an exited process has no figures left)."""

    connector: float
    postgres: float
    machine_busy: float
    machine_total: float
    at: float

    @classmethod
    def take(cls, connector_pid: int, postgres_pid: int) -> CpuMark:
        busy, total = _common.machine_cpu()
        postgres = tree_cpu(postgres_pid) if postgres_pid else 0.0
        connector = _common.process_cpu(connector_pid)
        return cls(connector, postgres, busy, total, time.perf_counter())

    def describe(self, end: CpuMark, count: int, *, postgres: bool) -> str:
        wall = max(end.at - self.at, 1e-9)
        machine = (end.machine_busy - self.machine_busy) / max(
            end.machine_total - self.machine_total, 1e-9
        )
        connector = end.connector - self.connector
        server = f", PostgreSQL {(end.postgres - self.postgres) / wall:.2f}" if postgres else ""
        return (
            f"CPU over {wall:.1f} s, in cores: connector {connector / wall:.2f}{server}; machine "
            f"{machine:.0%} busy of {_common.cpu_count()} cores; connector "
            f"{connector / count * 1e6:,.0f} µs an event"
        )


def wait_delivered(connector: IndexConnector, count: int, deadline: float) -> dict[str, float]:
    """Poll /metrics until delivered_total reaches ``count``; PhaseFailed when it does not
    move for STALL_SECONDS."""
    delivered, moved = -1.0, time.monotonic()
    while True:
        connector.check_alive()
        try:
            metrics = connector.metrics()
        except OSError:  # a busy loop answered late; try again
            metrics = {}
        now_delivered = _common.summed(metrics, "siem_export_delivered_total")
        if now_delivered >= count:
            return metrics
        now = time.monotonic()
        if metrics and now_delivered != delivered:
            delivered, moved = now_delivered, now
        elif now - moved > STALL_SECONDS:
            raise PhaseFailed(
                f"ingest: {delivered:.0f} of {count} delivered, no progress for "
                f"{STALL_SECONDS:g} s\n{connector.log_tail()}"
            )
        if now > deadline:
            raise _common.BenchTimeout("ingest: not done in the time left")
        time.sleep(POLL_SECONDS)


def read_back(store: Target, url: str, expected: dict[str, list[str]]) -> tuple[_common.Check, int]:
    """Every stored (tenant, event id) in sequence order vs what was published; and how many
    tenants have sequences other than 1..n."""
    got: defaultdict[str, list[str]] = defaultdict(list)
    sequences: defaultdict[str, list[int]] = defaultdict(list)
    rows = store.fetch(
        url, "SELECT tenant_id, event_id, sequence FROM audit_events ORDER BY tenant_id, sequence"
    )
    for tenant, event_id, sequence in rows:
        got[str(tenant)].append(str(event_id))
        sequences[str(tenant)].append(int(sequence))
    bad = sum(seqs != list(range(1, len(seqs) + 1)) for seqs in sequences.values())
    return _common.verify(expected, dict(got)), bad


def run_ingest(
    setup: Setup, store: Target, topics: TopicsConfig, expected: dict[str, list[str]]
) -> Ingest:
    count = sum(len(ids) for ids in expected.values())
    url = store.new_url("ingest")
    pg_pid = store.pid if isinstance(store, PostgresTarget) else 0
    with IndexConnector(setup, topics, url) as connector:
        deadline = time.monotonic() + setup.time_left()
        ready_at = connector.wait_ready(deadline)
        began = CpuMark.take(connector.pid, pg_pid)
        metrics = wait_delivered(connector, count, deadline)
        done_at = time.time()
        ended = CpuMark.take(connector.pid, pg_pid)
    check, bad = read_back(store, url, expected)
    return Ingest(
        rate=_common.Rate(count, done_at - ready_at),
        rate_from_launch=_common.Rate(count, done_at - connector.launched),
        ready_seconds=ready_at - connector.launched,
        cpu=began.describe(ended, count, postgres=pg_pid != 0),
        metrics=metrics,
        stop_seconds=connector.stop_seconds,
        exit_code=connector.exit_code,
        check=check,
        bad_sequences=bad,
        logs=connector.log_summary(),
    )


# --- the stored events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A pool event: its row and the delivered JSON after its timestamp."""

    row: IndexedEvent
    tail: bytes


@dataclass
class Profile:
    """A query tenant: what the queries draw their parameters from (a sample of its rows)."""

    tenant: str
    label: str
    events: int = 0
    first_ms: int = 0
    last_ms: int = 0
    sample: list[IndexedEvent] = field(default_factory=list)


class Synthetic:
    """``count`` stored events drawn from a pool of realistic synthetic events (see the module
    docstring), the same every time ``batches`` is called."""

    def __init__(self, count: int, tenants: int, seed: int, end_ms: int) -> None:
        self.count = count
        self.seed = seed
        factory = EventFactory(tenants, seed=seed)
        self.templates = [
            self._template(validate_event(e)) for e in factory.events(min(count, POOL_SIZE))
        ]
        # EventFactory's tenants come largest first.
        self.query_tenants = {
            factory.tenants[rank].tenant_id: label
            for rank, label in QUERY_TENANTS
            if rank < len(factory.tenants)
        }
        self.start_ms = end_ms - SPAN_MS
        self.end_ms = end_ms
        self.step_ms = SPAN_MS / count
        self.counters: dict[str, int] = {}
        self.profiles: dict[str, Profile] = {}

    @staticmethod
    def _template(event: Any) -> Template:
        body = to_json_bytes(event)
        tail = body[body.index(_AFTER_TIMESTAMP) :]
        rebuilt = b"".join(
            (_HEAD, event["event_id"].encode(), _MID, event["timestamp"].encode(), tail)
        )
        if rebuilt != body:
            raise RuntimeError("the delivered JSON no longer starts with event_id, timestamp")
        return Template(IndexedEvent.from_event(event, body), tail)

    def batches(self, bulk_batch: int, tail_batch: int, tail: int) -> Iterator[list[Row]]:
        """Every row in order, in batches of ``bulk_batch`` until the last ``tail`` rows, then
        of ``tail_batch``. ``counters`` (each tenant's last sequence) and ``profiles`` are filled
        as the batches are drawn: between two batches they describe the rows drawn so far."""
        rng = random.Random(self.seed + 1)
        last: dict[str, int] = {}
        self.counters = last
        profiles = {t: Profile(t, label) for t, label in self.query_tenants.items()}
        self.profiles = profiles
        templates = self.templates
        batch: list[Row] = []
        for i in range(self.count):
            template = templates[rng.randrange(len(templates))]
            row = template.row
            tenant = row.tenant_id
            sequence = last[tenant] = last.get(tenant, 0) + 1
            ts = self.start_ms + int(i * self.step_ms)
            # Random first (ids arrive in no order), then the row number (unique).
            event_id = f"evt_{rng.getrandbits(24):06x}{i:08x}"
            stamp = format_timestamp(ts)
            body = b"".join((_HEAD, event_id.encode(), _MID, stamp.encode(), template.tail))
            made: Row = (
                tenant,
                event_id,
                sequence,
                ts,
                row.action,
                row.category,
                row.actor_id,
                row.actor_type,
                row.resource_type,
                row.resource_id,
                row.outcome,
                row.source_ip,
                body,
            )
            if i % CHECK_EVERY == 0:
                check_row(made)
            profile = profiles.get(tenant)
            if profile is not None:
                profile.events += 1
                profile.first_ms = profile.first_ms or ts
                profile.last_ms = ts
                if len(profile.sample) < PROFILE_SAMPLE:
                    profile.sample.append(indexed(made))
                elif (j := rng.randrange(profile.events)) < PROFILE_SAMPLE:
                    profile.sample[j] = indexed(made)
            batch.append(made)
            left = self.count - i - 1
            if left == tail or len(batch) == (bulk_batch if left > tail else tail_batch):
                yield batch
                batch = []
        if batch:
            yield batch


def indexed(row: Row) -> IndexedEvent:
    """The IndexedEvent of a row (what ``AuditStore.insert`` takes; it assigns the sequence)."""
    tenant, event_id, _, ts, action, category, actor, actor_type, rtype, rid, outcome, ip, body = (
        row
    )
    return IndexedEvent(
        tenant_id=tenant,
        event_id=event_id,
        timestamp_ms=ts,
        action=action,
        category=category,
        actor_id=actor,
        actor_type=actor_type,
        resource_type=rtype,
        resource_id=rid,
        outcome=outcome,
        source_ip=ip,
        body=body,
    )


def check_row(row: Row) -> None:
    """The body of a generated row is a valid event whose index columns are the row's."""
    body = row[12]
    event = validate_event(orjson.loads(body))
    if IndexedEvent.from_event(event, body) != indexed(row):
        raise RuntimeError(f"generated row {row[1]} does not match its own JSON")


class TimedBatches:
    """An iterator of batches that adds up the time spent drawing them (generation)."""

    def __init__(self, batches: Iterator[list[Row]]) -> None:
        self._batches = batches
        self.seconds = 0.0
        self.rows = 0

    def take(self, rows: int) -> Iterator[list[Row]]:
        """Batches until ``rows`` rows in all have been drawn (batches never straddle it)."""
        while self.rows < rows:
            began = time.perf_counter()
            batch = next(self._batches, None)
            self.seconds += time.perf_counter() - began
            if batch is None:
                return
            self.rows += len(batch)
            yield batch


@dataclass(frozen=True)
class Loaded:
    """A store filled with the stored events, checked."""

    url: str
    schema_version: int
    bulk: BulkLoad
    generated: _common.Rate  # drawing the rows (this script)
    tail: _common.Rate  # through AuditStore.insert
    total: int
    tenants: int
    problems: list[str]
    size: str


async def insert_tail(url: str, batches: Iterator[list[Row]]) -> _common.Rate:
    """The last rows through ``AuditStore.insert``, one transaction a batch (the sink's way)."""
    store = open_store(url)
    rows, seconds = 0, 0.0
    try:
        await store.migrate()
        for batch in batches:
            events = [indexed(row) for row in batch]
            began = time.perf_counter()
            added = await store.insert(events)
            seconds += time.perf_counter() - began
            if added != len(events):
                raise PhaseFailed(f"AuditStore.insert added {added} of {len(events)} new rows")
            rows += added
    finally:
        await store.close()
    return _common.Rate(rows, seconds)


def check_store(store: Target, url: str, total: int) -> tuple[int, list[str]]:
    """(tenants, problems): the row count, every tenant's sequences dense (1..n, unique by the
    schema) and its counter row equal to n."""
    problems = []
    rows = int(store.fetch(url, "SELECT count(*) FROM audit_events")[0][0])
    if rows != total:
        problems.append(f"{rows} rows stored, expected {total}")
    per_tenant = (
        "SELECT tenant_id, count(*) AS n, min(sequence) AS lo, max(sequence) AS hi "
        "FROM audit_events GROUP BY tenant_id"
    )
    tenants, gaps = store.fetch(
        url,
        f"SELECT count(*), sum(CASE WHEN n <> hi OR lo <> 1 THEN 1 ELSE 0 END) FROM ({per_tenant}) t",  # noqa: S608, E501 - fixed text
    )[0]
    if gaps:
        problems.append(f"{gaps} tenants with sequences other than 1..n")
    wrong = store.fetch(
        url,
        f"SELECT count(*) FROM ({per_tenant}) t LEFT JOIN tenant_sequences s "  # noqa: S608
        "ON s.tenant_id = t.tenant_id WHERE s.last_sequence IS NULL OR s.last_sequence <> t.n",
    )[0][0]
    if wrong:
        problems.append(f"{wrong} tenants whose counter row is not their row count")
    return int(tenants), problems


def run_load(setup: Setup, store: Target, synthetic: Synthetic) -> Loaded:
    url = store.new_url("stored")
    version = migrate(url)
    batches = TimedBatches(synthetic.batches(BULK_BATCH, TAIL_BATCH, TAIL_ROWS))
    bulk_rows = max(synthetic.count - TAIL_ROWS, 0)
    bulk = store.bulk_load(url, batches.take(bulk_rows), lambda: dict(synthetic.counters))
    setup.time_left()
    tail = asyncio.run(insert_tail(url, batches.take(synthetic.count)))
    tenants, problems = check_store(store, url, synthetic.count)
    return Loaded(
        url=url,
        schema_version=version,
        bulk=bulk,
        generated=_common.Rate(batches.rows, batches.seconds),
        tail=tail,
        total=synthetic.count,
        tenants=tenants,
        problems=problems,
        size=store.size(url),
    )


# --- the API -------------------------------------------------------------------------------------


def create_account(url: str, tenant: str) -> tuple[str, str]:
    """``siem-export accounts create --tenant T --scope audit:read``: (account id, token)."""
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-m", "connectors", "accounts", "create", "--tenant", tenant]
        + ["--scope", "audit:read", "--name", "bench-query"],
        cwd=_common.ROOT,
        env=child_env({"SIEM_EXPORT_STORE__URL": url}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    if done.returncode != 0 or "token" not in fields or "account_id" not in fields:
        raise PhaseFailed(f"accounts create exited with {done.returncode}: {done.stderr[-500:]}")
    return fields["account_id"], fields["token"]


def hidden(token: str) -> str:
    """A token as it may be printed: its first characters only."""
    return f"{token[:8]}… ({len(token)} characters, hidden)"


class ApiServer:
    """``python -m connectors serve`` on a free port of 127.0.0.1 against the store at ``url``
    (a context manager: started and ready on entry, SIGTERM on exit)."""

    def __init__(self, setup: Setup, url: str, topics: TopicsConfig, label: str) -> None:
        self.port = _common.free_port()
        self.ops_port = _common.free_port()
        self.log_path = setup.tmp / f"serve-{label}.log"
        self._env = child_env(
            {
                "SIEM_EXPORT_STORE__URL": url,
                "SIEM_EXPORT_API__CURSOR_SECRET": secrets.token_urlsafe(48),
                "SIEM_EXPORT_API__RATE_PER_SECOND": "100000",
                "SIEM_EXPORT_API__BURST": "100000",
                "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": setup.kafka.bootstrap_servers,
                "SIEM_EXPORT_TOPICS__EVENTS": topics.events,
                "SIEM_EXPORT_TOPICS__DLQ": topics.dlq,
                "SIEM_EXPORT_TOPICS__ALERTS": topics.alerts,
                "SIEM_EXPORT_TOPICS__CONFIG": topics.config,
                "SIEM_EXPORT_OPS__PORT": str(self.ops_port),
            }
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def __enter__(self) -> Self:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
                [sys.executable, "-m", "connectors", "serve", "--host", HOST]
                + ["--port", str(self.port)],
                cwd=_common.ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is ours to handle: we stop it in __exit__
                preexec_fn=_common.die_with_parent,  # the only way to set PR_SET_PDEATHSIG
            )
        try:
            deadline = time.monotonic() + 60
            url = f"http://{HOST}:{self.port}/v1/openapi.json"
            while True:
                if self._process.poll() is not None:
                    raise PhaseFailed(
                        f"serve exited with {self._process.returncode}:\n{self.tail()}"
                    )
                with contextlib.suppress(OSError):
                    if _common.http_get(url, 1.0)[0] == 200:
                        break
                if time.monotonic() > deadline:
                    raise PhaseFailed(f"serve did not answer in 60 s:\n{self.tail()}")
                time.sleep(0.1)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            _common.terminate(self._process, 20)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def server_seconds(self) -> str:
        """The API's own mean time a request (its siem_export_api_request_seconds) and the
        requests it counted by status."""
        status, body = _common.http_get(f"http://{HOST}:{self.ops_port}/metrics", 10)
        if status != 200:
            return "API metrics: n/a"
        total = count = 0.0
        statuses: dict[str, float] = defaultdict(float)
        for line in body.decode().splitlines():
            if line.startswith("siem_export_api_request_seconds_sum{"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("siem_export_api_request_seconds_count{"):
                count += float(line.rsplit(" ", 1)[1])
            elif line.startswith("siem_export_api_requests_total{"):
                code = line.split('status="', 1)[1].split('"', 1)[0]
                statuses[code] += float(line.rsplit(" ", 1)[1])
        mean = f"{total / count * 1000:.2f} ms" if count else "n/a"
        codes = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(statuses.items()))
        return f"the API's own mean time a request {mean}; requests by status {{{codes}}}"


class Client:
    """One keep-alive HTTP connection to the API, with the Bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def get(self, params: dict[str, str]) -> tuple[int, bytes, float]:
        """(status, body, seconds from writing the request to the body read)."""
        path = "/v1/audit-events" + (f"?{urlencode(params)}" if params else "")
        for attempt in (1, 2):
            began = time.perf_counter()
            try:
                self._conn.request("GET", path, headers=self._headers)
                response = self._conn.getresponse()
                body = response.read()
                return response.status, body, time.perf_counter() - began
            except (http.client.HTTPException, ConnectionError):
                self._conn.close()  # the server closed an idle connection: a new one, once
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._conn.close()


# --- queries -------------------------------------------------------------------------------------

KINDS = (
    "no filter (last 24 h)",
    "1-day range",
    "action",
    "action certificate.*",
    "category",
    "actor_id",
    "outcome",
    "resource type+id",
    "source_ip",
    "page 2 (next_cursor)",
    "order=ingestion",
)
API_SETTINGS = ApiSettings()


def params_of(kind: str, profile: Profile, rng: random.Random) -> dict[str, str]:
    """A first request of ``kind``, with values drawn from the tenant's own events."""
    event = rng.choice(profile.sample)
    month = {"start": format_timestamp(profile.first_ms)}
    if kind == "no filter (last 24 h)":
        return {}
    if kind in ("1-day range", "page 2 (next_cursor)"):
        start = rng.randint(profile.first_ms, max(profile.first_ms, profile.last_ms - DAY_MS))
        return {"start": format_timestamp(start), "end": format_timestamp(start + DAY_MS)}
    if kind == "action":
        return month | {"action": event.action}
    if kind == "action certificate.*":
        return month | {"action": "certificate.*"}
    if kind == "category":
        return month | {"category": event.category}
    if kind == "actor_id":
        return month | {"actor_id": event.actor_id}
    if kind == "outcome":
        return month | {"outcome": rng.choice(("failure", "denied"))}
    if kind == "resource type+id":
        return month | {"resource_type": event.resource_type, "resource_id": event.resource_id}
    if kind == "source_ip":
        some = rng.sample(profile.sample, min(50, len(profile.sample)))
        with_ip = [e for e in some if e.source_ip] or profile.sample
        return month | {"source_ip": str(with_ip[0].source_ip)}
    if kind == "order=ingestion":
        return {"order": "ingestion"}
    raise ValueError(kind)


def _matches(name: str, want: str, event: dict[str, Any]) -> bool:
    """Whether an event returned for a query parameter ``name=want`` matches it."""
    if name == "action":
        action = str(event["action"])
        return action.startswith(want[:-1]) if want.endswith(".*") else action == want
    if name == "start":
        return parse_timestamp(event["timestamp"]) >= parse_timestamp(want)
    if name == "end":
        return parse_timestamp(event["timestamp"]) < parse_timestamp(want)
    if name == "category":
        got: object = str(event["action"]).partition(".")[0]
    elif name in ("actor_id", "resource_id", "resource_type"):
        part, _, key = name.partition("_")
        got = event[part][key]
    elif name in ("outcome", "source_ip"):
        got = event[name]
    else:  # order, cursor
        return True
    return got == want


def check_page(
    params: dict[str, str], status: int, body: bytes, tenant: str
) -> tuple[int, str | None, str | None]:
    """(rows, next_cursor, problem): 200, the tenant's events only, each matching the filter,
    in (timestamp, event_id) order unless order=ingestion."""
    if status != 200:
        return 0, None, f"HTTP {status}: {body[:200]!r}"
    page = orjson.loads(body)
    data: list[dict[str, Any]] = page["data"]
    keys = []
    for event in data:
        if event["tenant_id"] != tenant:
            return len(data), None, f"ANOTHER TENANT'S EVENT {event['event_id']}"
        for name, want in params.items():
            if not _matches(name, want, event):
                return len(data), None, f"event {event['event_id']} does not match {name}={want}"
        keys.append((parse_timestamp(event["timestamp"]), str(event["event_id"])))
    if params.get("order") != "ingestion" and keys != sorted(set(keys)):
        return len(data), None, "events out of (timestamp, event_id) order"
    if len(data) > PAGE:
        return len(data), None, f"{len(data)} events in a page of {PAGE}"
    cursor = page.get("next_cursor")
    return len(data), cursor if isinstance(cursor, str) else None, None


@dataclass
class Samples:
    """One query kind's timed requests."""

    seconds: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


def run_queries(
    client: Client, profile: Profile, per_kind: int, deadline: float
) -> tuple[dict[str, Samples], int]:
    """Rounds of one query of each kind (WARMUP_ROUNDS first, not counted) until ``per_kind``
    rounds or the deadline; (samples by kind, rounds counted)."""
    rng = random.Random(7)
    samples = {kind: Samples() for kind in KINDS}
    ingestion_cursor: str | None = None
    rounds = 0
    for number in range(WARMUP_ROUNDS + per_kind):
        if time.monotonic() > deadline:
            break
        for kind in KINDS:
            params = params_of(kind, profile, rng)
            if kind == "page 2 (next_cursor)":
                status, body, _ = client.get(params)
                _, cursor, problem = check_page(params, status, body, profile.tenant)
                if cursor is None:
                    continue  # a day without a second page (a small tenant's quiet day)
                params = params | {"cursor": cursor}
            elif kind == "order=ingestion" and ingestion_cursor is not None:
                params = params | {"cursor": ingestion_cursor}
            status, body, seconds = client.get(params)
            rows, cursor, problem = check_page(params, status, body, profile.tenant)
            if kind == "order=ingestion":  # walk on; start again once caught up
                ingestion_cursor = cursor if rows == PAGE else None
            if number < WARMUP_ROUNDS:
                continue
            sample = samples[kind]
            if problem is not None:
                sample.errors += 1
                sample.first_error = sample.first_error or problem
                continue
            sample.seconds.append(seconds)
            sample.rows.append(rows)
        if number >= WARMUP_ROUNDS:
            rounds += 1
    return samples, rounds


def statement_of(kind: str, dialect: Dialect, profile: Profile) -> Statement:
    """The statement the store runs for a first request of ``kind`` (for page 2: a keyset one
    hour into the range; for order=ingestion: after sequence 1000)."""
    params = params_of(kind, profile, random.Random(11))
    query = parse_list_query(MultiDict(params), API_SETTINGS)
    if query.order == "ingestion":
        where = query.event_filter((query.start_ms, query.end_ms))
        return page_by_sequence(dialect, profile.tenant, where, 1000, PAGE)
    window = query.window(API_SETTINGS, int(time.time() * 1000))
    after = (window[0] + 3_600_000, "evt_") if kind == "page 2 (next_cursor)" else None
    where = query.event_filter(window)
    return page_by_time(dialect, profile.tenant, where, after, PAGE + 1)


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted here)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(share * len(ordered) + 0.999999) - 1))]


def latency_row(name: str, seconds: Sequence[float], rows: Sequence[int], errors: int) -> str:
    if not seconds:
        return f"{name:<22} {0:>5} {'-':>6} {'-':>8} {'-':>8} {'-':>8} {'-':>8} {errors:>6}"
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<22} {len(ms):>5} {sum(rows) / len(rows):>6.1f} {percentile(ms, 0.5):>8.2f} "
        f"{percentile(ms, 0.99):>8.2f} {max(ms):>8.2f} {sum(ms) / len(ms):>8.2f} {errors:>6}"
    )


def short_plan(plan: str) -> str:
    """The access path of an EXPLAIN (steps joined by "; "): indexes, sorts, per-row filters."""
    steps = []
    for step in plan.split("; "):
        step = step.removeprefix("-> ")
        if step.startswith("SEARCH audit_events USING "):  # SQLite: index (constraints)
            steps.append(step.removeprefix("SEARCH audit_events USING ").replace("INDEX ", ""))
        elif step.startswith(("SCAN ", "USE TEMP B-TREE")):  # SQLite: full scan, sort
            steps.append(step.lower())
        elif found := _PG_INDEX.match(step):
            steps.append(found[2] + (" (bitmap)" if found[1].startswith("Bitmap") else ""))
        elif step in ("Sort", "Incremental Sort") or step.startswith("Seq Scan"):
            steps.append(step.lower())
        elif step.startswith("Filter: "):
            columns = sorted(set(_PG_FILTER_COLUMN.findall(step)) - {"tenant_id"})
            steps.append(f"row filter on {', '.join(['tenant_id', *columns])}")
    return ", ".join(steps) or plan


_PG_INDEX = re.compile(r"(Bitmap Index Scan on|Index (?:Only )?Scan using) (\w+)")
_PG_FILTER_COLUMN = re.compile(r"([a-z_]+) = ")


@dataclass(frozen=True)
class TenantRun:
    """The queries of one tenant."""

    profile: Profile
    samples: dict[str, Samples]
    rounds: int
    plans: dict[str, str]
    account: str

    @property
    def all_seconds(self) -> list[float]:
        return [s for sample in self.samples.values() for s in sample.seconds]

    @property
    def errors(self) -> int:
        return sum(sample.errors for sample in self.samples.values())


@dataclass(frozen=True)
class Queried:
    """The query phase of one store."""

    loaded: Loaded
    tenants: list[TenantRun]
    api: str


def run_query(
    setup: Setup,
    store: Target,
    synthetic: Synthetic,
    topics: TopicsConfig,
    per_kind: int,
    seconds: float,
) -> Queried:
    loaded = run_load(setup, store, synthetic)
    if loaded.problems:
        raise PhaseFailed(f"the loaded store is wrong: {'; '.join(loaded.problems)}")
    accounts = {t: create_account(loaded.url, t) for t in synthetic.profiles}
    runs = []
    with ApiServer(setup, loaded.url, topics, store.name) as api:
        share = min(seconds, setup.time_left()) / len(accounts)
        for tenant, (account_id, token) in accounts.items():
            profile = synthetic.profiles[tenant]
            plans = {
                kind: store.explain(loaded.url, statement_of(kind, store.dialect, profile))
                for kind in KINDS
            }
            client = Client(api.port, token)
            try:
                samples, rounds = run_queries(client, profile, per_kind, time.monotonic() + share)
            finally:
                client.close()
            account = f"account {account_id}, token {hidden(token)}"
            runs.append(TenantRun(profile, samples, rounds, plans, account))
        api_line = api.server_seconds()
    return Queried(loaded=loaded, tenants=runs, api=api_line)


# --- report --------------------------------------------------------------------------------------


def log_lines(logs: dict[str, int]) -> list[str]:
    return [f"connector log lines: {logs}"] if logs else []


def describe_ingest(run: Ingest, ceiling: _common.Rate) -> list[str]:
    verdict = "ok" if run.ok else "PROBLEMS"
    return [
        f"/readyz to every event delivered: {run.rate} = {_common.ratio(run.rate, ceiling)} "
        f"ceiling; from launch {run.rate_from_launch.per_second:,.0f}/s (launch to /readyz "
        f"{run.ready_seconds:.2f} s)",
        run.cpu,
        f"stop: exit {run.exit_code} after {run.stop_seconds:.2f} s",
        f"store read back ({verdict}): {run.check}; tenants whose sequences are not 1..n in "
        f"publish order: {run.bad_sequences}",
        "connector metrics: " + ", ".join(_common.describe_metrics(run.metrics, INDEX_MEANS)),
        *log_lines(run.logs),
    ]


def describe_query(run: Queried, synthetic: Synthetic, per_kind: int) -> list[str]:
    loaded, bulk = run.loaded, run.loaded.bulk
    span = f"{format_timestamp(synthetic.start_ms)} .. {format_timestamp(synthetic.end_ms)}"
    written = _common.Rate(bulk.rows, bulk.write_seconds)
    in_all = bulk.rows / max(bulk.write_seconds + bulk.index_seconds, 1e-9)
    checked = "; ".join(loaded.problems) or "row count, sequences 1..n and counters ok"
    lines = [
        f"stored {loaded.total:,} events of {loaded.tenants} tenants over {span} (schema "
        f"version {loaded.schema_version}); rows drawn by this script: {loaded.generated}",
        f"bulk load (direct connection, secondary indexes dropped and rebuilt): rows written "
        f"{written}, {bulk.indexes} indexes rebuilt in {bulk.index_seconds:.1f} s: "
        f"{in_all:,.0f} rows/s in all; then {bulk.after_seconds:.1f} s (PostgreSQL: VACUUM "
        "ANALYZE and a checkpoint; SQLite: WAL checkpoint)",
        f"AuditStore.insert at {loaded.total - loaded.tail.events:,} rows (5,000-row "
        f"transactions, the index sink's path, durable commits): {loaded.tail}",
        f"store checked: {checked}",
        f"on disk: {loaded.size}",
    ]
    for tenant in run.tenants:
        profile = tenant.profile
        lines += [
            f"{profile.label} {profile.tenant}: {profile.events:,} events "
            f"({profile.events / max(loaded.total, 1):.2%}); {tenant.account}",
            f"  {tenant.rounds} rounds of the {len(KINDS)} kinds (asked {per_kind}) after "
            f"{WARMUP_ROUNDS} warm-up rounds, one request at a time; ms, client side:",
            f"  {'kind':<22} {'n':>5} {'rows':>6} {'p50':>8} {'p99':>8} {'max':>8} {'mean':>8} "
            f"{'errors':>6}  plan",
        ]
        for kind, sample in tenant.samples.items():
            row = latency_row(kind, sample.seconds, sample.rows, sample.errors)
            lines.append(f"  {row}  {short_plan(tenant.plans[kind])}")
        every = [r for sample in tenant.samples.values() for r in sample.rows]
        lines.append("  " + latency_row("overall", tenant.all_seconds, every, tenant.errors))
        for kind, sample in tenant.samples.items():
            if sample.first_error:
                lines.append(f"  FIRST ERROR of {kind}: {sample.first_error}")
    lines.append(run.api)
    return lines


def summary_rows(
    ceiling: _common.Rate | None,
    ingests: dict[str, Ingest | str],
    queries: dict[str, Queried | str],
) -> list[str]:
    out = []
    if ceiling is not None:
        row = "{:<34} {:>7} {:>8} {:>9} {:>9}  {}"
        out.append(row.format("ingest", "events", "seconds", "events/s", "x ceiling", "check"))
        out.append(
            row.format(
                "ceiling (consume, decode, JSON)",
                ceiling.events,
                f"{ceiling.seconds:.2f}",
                f"{ceiling.per_second:,.0f}",
                "1.00x",
                "-",
            )
        )
        for name, ingest in ingests.items():
            if isinstance(ingest, str):
                out.append(f"{'run index -> ' + name:<34} FAILED: {ingest.splitlines()[0][:90]}")
                continue
            out.append(
                row.format(
                    f"run index -> {name}",
                    ingest.rate.events,
                    f"{ingest.rate.seconds:.2f}",
                    f"{ingest.rate.per_second:,.0f}",
                    _common.ratio(ingest.rate, ceiling),
                    "ok" if ingest.ok else "PROBLEMS (see above)",
                )
            )
    for name, run in queries.items():
        if isinstance(run, str):
            out.append(f"query {name}: FAILED: {run.splitlines()[0][:90]}")
            continue
        loaded = run.loaded
        out.append(
            f"query {name}: {loaded.total:,} events stored ({loaded.size.split(' (')[0]}); "
            f"bulk load {loaded.bulk.rows / max(loaded.bulk.write_seconds, 1e-9):,.0f} rows/s "
            f"+ {loaded.bulk.index_seconds:.0f} s of index builds; AuditStore.insert at that "
            f"size {loaded.tail.per_second:,.0f} rows/s"
        )
        for tenant in run.tenants:
            seconds = [s * 1000 for s in tenant.all_seconds]
            worst = max(
                (
                    (percentile(sample.seconds, 0.99) * 1000, kind)
                    for kind, sample in tenant.samples.items()
                    if sample.seconds
                ),
                default=(0.0, "-"),
            )
            overall = (
                f"p50 {percentile(seconds, 0.5):.2f} ms, p99 {percentile(seconds, 0.99):.2f} ms"
                if seconds
                else "no query answered"
            )
            out.append(
                f"  {tenant.profile.label} ({tenant.profile.events:,} events): {len(seconds)} "
                f"pages, {overall}, worst p99 {worst[0]:.2f} ms ({worst[1]}); errors "
                f"{tenant.errors}"
            )
    return out


# --- main ----------------------------------------------------------------------------------------


@dataclass
class Setup:
    kafka: KafkaConfig
    tmp: Path
    connector_env: dict[str, str]
    time_left: Callable[[], float]


def comma_list(known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        wanted = set(text.split(","))
        if unknown := wanted - set(known):
            raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; known: {','.join(known)}")
        return [k for k in known if k in wanted]

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="events ingested from Kafka")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--stored", type=int, default=5_000_000, help="events stored to query")
    parser.add_argument("--stored-tenants", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200, help="timed queries a kind")
    parser.add_argument(
        "--query-seconds", type=float, default=150.0, help="time cap of one store's queries"
    )
    parser.add_argument(
        "--stores",
        type=comma_list(_STORES),
        default=list(_STORES),
        help=f"comma-separated subset of {','.join(_STORES)} (default: both)",
    )
    _common.add_phases(parser, _PHASES)
    _common.add_connector_env(parser, "SIEM_EXPORT_STORE__POOL_SIZE=8")
    parser.add_argument("--bootstrap", default=None, help="use this cluster instead of a new one")
    args = parser.parse_args()
    if args.stored <= TAIL_ROWS:
        parser.error(f"--stored must be more than {TAIL_ROWS}")
    if "ingest" in args.phases:
        _common.note_small_count(args.count)
    _common.run_bounded(
        lambda time_left, summary: _main(args, time_left, summary),
        f"{_common.cpu_count()} cores shared by broker, PostgreSQL, connector or API and this "
        "script: figures are noisy",
        TIME_LIMIT_SECONDS,
    )


def _main(args: argparse.Namespace, time_left: Callable[[], float], summary: list[str]) -> None:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ingests: dict[str, Ingest | str] = {}
    queries: dict[str, Queried | str] = {}
    ceiling: _common.Rate | None = None
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="siem-bench-q-")))
        print(
            f"machine: {platform.python_implementation()} {platform.python_version()}, "
            f"{_common.cpu_count()} cores, {memory_gib:.0f} GiB, shared by the Kafka broker "
            "(JVM), PostgreSQL, the connector or API process and this script (figures are noisy)",
            flush=True,
        )
        stores: list[Target] = []
        for name in args.stores:
            stores.append(
                SqliteTarget(tmp) if name == "sqlite" else stack.enter_context(PostgresTarget())
            )
        for store in stores:
            print(f"{store.name}: {store.describe()}", flush=True)
        kafka = stack.enter_context(_common.broker(args.bootstrap))
        setup = Setup(kafka, tmp, dict(args.connector_env), time_left)
        if setup.connector_env:
            print(
                "connector settings added: "
                + " ".join(f"{k}={v}" for k, v in setup.connector_env.items())
            )

        def phase(title: str, body: Callable[[], list[str]]) -> str | None:
            """Run and print one phase; why it failed, or None (the next phase runs anyway)."""
            print(f"\n{title}", flush=True)
            try:
                lines = body()
            except (PhaseFailed, RuntimeError, psycopg.Error, sqlite3.Error) as exc:
                print(f"  FAILED: {exc}", flush=True)
                return str(exc)
            for line in lines:
                print(f"  {line}", flush=True)
            return None

        if "ingest" in args.phases:
            # (1) publish, (2) ceiling
            events = list(EventFactory(args.tenants, seed=1).events(args.count))
            expected = _common.expected_order(events)
            topics = _common.make_topics(kafka, args.partitions, "ix")
            produced = _common.publish_events(kafka, topics.events, events)
            del events
            print(
                f"\n[1] publish: {args.count} events, {len(expected)} tenants, "
                f"{args.partitions} partitions\n  publish (validate + encode + produce):  "
                f"{produced}",
                flush=True,
            )
            ceiling = _common.ceiling(kafka, topics.events, args.count)
            _common.warm_group_coordinator(kafka, topics.events)
            print(f"\n[2] ceiling (consume + decode + JSON):   {ceiling}", flush=True)
            for store in stores:

                def ingest(store: Target = store) -> list[str]:
                    run = ingests[store.name] = run_ingest(setup, store, topics, expected)
                    assert ceiling is not None
                    return describe_ingest(run, ceiling)

                failed = phase(
                    f"[3] ingest into {store.name}: `python -m connectors run index`, fresh "
                    f"database and consumer group; until all {args.count} events are delivered",
                    ingest,
                )
                if failed is not None:
                    ingests[store.name] = failed

        if "query" in args.phases:
            began = time.perf_counter()
            end_ms = int(time.time() * 1000) - 5 * 60_000
            synthetic = Synthetic(args.stored, args.stored_tenants, 3, end_ms)
            print(
                f"\n[4] stored events: a pool of {len(synthetic.templates):,} synthetic events "
                f"({args.stored_tenants} tenants) made in {time.perf_counter() - began:.1f} s; "
                f"{args.stored:,} events drawn from it (fresh ids and timestamps), the last "
                f"{TAIL_ROWS:,} through AuditStore.insert",
                flush=True,
            )
            auth_topics = _common.make_topics(kafka, 1, "qa")
            for store in stores:

                def query(store: Target = store) -> list[str]:
                    run = queries[store.name] = run_query(
                        setup, store, synthetic, auth_topics, args.queries, args.query_seconds
                    )
                    return describe_query(run, synthetic, args.queries)

                failed = phase(
                    f"[5] query {store.name}: bulk load, `accounts create`, `serve`, "
                    "filtered page queries over HTTP",
                    query,
                )
                if failed is not None:
                    queries[store.name] = failed
        summary.extend(summary_rows(ceiling, ingests, queries))
        summary.append(
            "ingest seconds: /readyz to siem_export_delivered_total == N (an event is delivered "
            "once its insert transaction committed); query latencies: client side, one request "
            "at a time, page size 100, after a warm-up; stored events bulk-loaded, not ingested"
        )


if __name__ == "__main__":
    main()
