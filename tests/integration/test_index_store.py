"""The index store on real databases: a SQLite file and a private PostgreSQL cluster.

Every test runs on both stores (the ``store`` fixture: SQLite in the test's temporary
directory, PostgreSQL in a fresh database of the session's cluster, both migrated). What is
shown: idempotent inserts; per-tenant sequences, committed in order even under concurrent
writers; every filter alone and combined; keyset pages over 10,000 events with many equal
timestamps; sequence pages that see late events; tenant isolation through every read;
streaming page by page; retention in batches; migrations run twice and concurrently; machine
accounts; errors that say whether to retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from connectors.index.errors import StoreError, StoreTimeoutError, StoreUnavailableError
from connectors.index.model import EventFilter, IndexedEvent, StoredEvent
from connectors.index.postgres import MIGRATION_LOCK_KEY, PostgresStore
from connectors.index.store import AuditStore, open_store
from tests.postgres_support import (
    postgres_cluster_fixture,  # noqa: F401 - the fixture "postgres_cluster"
    postgres_url_fixture,  # noqa: F401 - the fixture "postgres_url"
)
from tests.process_support import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STORES = ["sqlite", "postgresql"]
T0 = 1_773_564_137_000  # 2026-03-15T08:42:17Z
ACTIONS = (
    "certificate.issue",
    "certificate.revoke",
    "certificate.renew",
    "authentication.login",
    "pki.ca_create",
    "machine_account.token_exchange",
)
ACTOR_TYPES = ("user", "machine_account", "system")
OUTCOMES = ("success", "failure", "denied")
RESOURCE_TYPES = ("certificate", "ca", "session")


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/audit.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[AuditStore]:
    """A migrated store, closed after the test."""
    opened = open_store(store_url)
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()


def make_event(
    tenant: str,
    event_id: str,
    timestamp_ms: int,
    action: str = "certificate.issue",
    *,
    actor_id: str = "usr_1",
    actor_type: str = "user",
    resource_type: str = "certificate",
    resource_id: str = "crt_1",
    outcome: str = "success",
    source_ip: str | None = "203.0.113.42",
) -> IndexedEvent:
    return IndexedEvent(
        tenant_id=tenant,
        event_id=event_id,
        timestamp_ms=timestamp_ms,
        action=action,
        category=action.partition(".")[0],
        actor_id=actor_id,
        actor_type=actor_type,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        source_ip=source_ip,
        body=b'{"event_id":"%s","tenant_id":"%s"}' % (event_id.encode(), tenant.encode()),
    )


def varied_events(tenant: str, count: int, seed: int = 7) -> list[IndexedEvent]:
    """Events whose fields take every value of small sets, with repeated timestamps."""
    rng = random.Random(seed)
    return [
        make_event(
            tenant,
            f"evt_{tenant}_{i:05d}",
            T0 + rng.randrange(40) * 1000,
            rng.choice(ACTIONS),
            actor_id=f"usr_{rng.randrange(5)}",
            actor_type=rng.choice(ACTOR_TYPES),
            resource_type=rng.choice(RESOURCE_TYPES),
            resource_id=f"res_{rng.randrange(8)}",
            outcome=rng.choice(OUTCOMES),
            source_ip=rng.choice(["203.0.113.1", "2001:db8::1", None]),
        )
        for i in range(count)
    ]


async def insert_in_batches(store: AuditStore, events: list[IndexedEvent], size: int) -> int:
    inserted = 0
    for start in range(0, len(events), size):
        inserted += await store.insert(events[start : start + size])
    return inserted


async def everything(store: AuditStore, tenant: str, where: EventFilter) -> list[StoredEvent]:
    return [e async for e in store.stream(tenant, where, after=None, page=50)]


async def by_sequence(store: AuditStore, tenant: str) -> list[StoredEvent]:
    return await store.query_by_sequence(tenant, EventFilter(), after_sequence=None, limit=100_000)


def matches(event: IndexedEvent, where: EventFilter) -> bool:
    """The filter's meaning, in Python, to compare the stores against."""
    if where.start_ms is not None and event.timestamp_ms < where.start_ms:
        return False
    if where.end_ms is not None and event.timestamp_ms >= where.end_ms:
        return False
    if where.action_prefix is not None and not event.action.startswith(where.action_prefix):
        return False
    for name in (
        "action",
        "category",
        "actor_id",
        "actor_type",
        "resource_type",
        "resource_id",
        "outcome",
        "source_ip",
    ):
        wanted = getattr(where, name)
        if wanted is not None and getattr(event, name) != wanted:
            return False
    return True


def time_order(events: list[IndexedEvent]) -> list[tuple[int, str]]:
    return sorted((e.timestamp_ms, e.event_id) for e in events)


# --------------------------------------------------------------------------- idempotency


async def test_the_same_batch_twice_stores_each_event_once(store: AuditStore) -> None:
    batch = varied_events("t1", 30) + varied_events("t2", 20)
    assert await store.insert(batch) == 50
    before = {t: await by_sequence(store, t) for t in ("t1", "t2")}
    assert await store.insert(batch) == 0
    assert await store.insert(list(reversed(batch))) == 0
    assert {t: await by_sequence(store, t) for t in ("t1", "t2")} == before
    assert len(before["t1"]) == 30
    assert len(before["t2"]) == 20


async def test_a_partly_known_batch_adds_only_the_new_events(store: AuditStore) -> None:
    events = varied_events("t1", 20)
    assert await store.insert(events[:10]) == 10
    # Old and new mixed, and a repeat within the batch: the first occurrence counts.
    repeat = dataclasses.replace(events[15], body=b'{"second":"copy"}')
    mixed = [events[3], events[15], events[12], repeat, events[0]] + events[10:12]
    assert await store.insert(mixed) == 4
    stored = await by_sequence(store, "t1")
    assert [e.sequence for e in stored] == list(range(1, 15))
    assert [e.event_id for e in stored[10:]] == [
        events[15].event_id,
        events[12].event_id,
        events[10].event_id,
        events[11].event_id,
    ]
    got = await store.get("t1", events[15].event_id)
    assert got is not None
    assert got.body == events[15].body


async def test_an_empty_batch_is_nothing(store: AuditStore) -> None:
    assert await store.insert([]) == 0
    assert await by_sequence(store, "t1") == []


# --------------------------------------------------------------------------- sequences


async def test_sequences_increase_per_tenant_in_the_order_given(store: AuditStore) -> None:
    rng = random.Random(3)
    tenants = ("t1", "t2", "t3")
    order: dict[str, list[str]] = {t: [] for t in tenants}
    for batch_number in range(5):
        batch = []
        for i in range(40):
            tenant = rng.choice(tenants)
            event = make_event(tenant, f"e{batch_number}_{i}", T0 - i)  # times run backwards
            batch.append(event)
            order[tenant].append(event.event_id)
        await store.insert(batch)
    for tenant in tenants:
        stored = await by_sequence(store, tenant)
        assert [e.event_id for e in stored] == order[tenant]
        assert [e.sequence for e in stored] == list(range(1, len(order[tenant]) + 1))


async def test_the_same_event_id_in_two_tenants_is_two_events(store: AuditStore) -> None:
    assert await store.insert([make_event("t1", "evt_same", T0)]) == 1
    assert await store.insert([make_event("t2", "evt_same", T0 + 5)]) == 1
    one, two = await store.get("t1", "evt_same"), await store.get("t2", "evt_same")
    assert one is not None
    assert two is not None
    assert (one.tenant_id, one.timestamp_ms, one.sequence) == ("t1", T0, 1)
    assert (two.tenant_id, two.timestamp_ms, two.sequence) == ("t2", T0 + 5, 1)


async def test_concurrent_writers_commit_sequences_in_order(store_url: str) -> None:
    """Four writers (separate connections) race on one tenant while a poller pages by
    sequence: the poller sees 1..N with no gap, so N+1 was never visible before N."""
    stores = [open_store(store_url) for _ in range(5)]
    try:
        await stores[0].migrate()
        writers, poller = stores[:4], stores[4]
        done = asyncio.Event()
        seen: list[int] = []

        async def write(number: int, writer: AuditStore) -> None:
            for batch in range(15):
                events = [make_event("t1", f"w{number}_{batch}_{i}", T0 + i) for i in range(20)]
                await writer.insert(events)

        async def poll() -> None:
            after: int | None = None
            while True:
                finished = done.is_set()
                page = await poller.query_by_sequence(
                    "t1", EventFilter(), after_sequence=after, limit=37
                )
                seen.extend(e.sequence for e in page)
                if page:
                    after = page[-1].sequence
                elif finished:
                    return
                else:
                    await asyncio.sleep(0.001)

        polling = asyncio.create_task(poll())
        try:
            async with asyncio.TaskGroup() as group:  # one failing writer cancels the others
                for number, writer in enumerate(writers):
                    group.create_task(write(number, writer))
            done.set()
            await polling
        finally:
            polling.cancel()
            await asyncio.gather(polling, return_exceptions=True)
        assert seen == list(range(1, 4 * 15 * 20 + 1))
    finally:
        for opened in stores:
            await opened.close()


# --------------------------------------------------------------------------- filters

FILTERS = [
    EventFilter(),
    EventFilter(action="certificate.revoke"),
    EventFilter(action_prefix="certificate."),
    EventFilter(action_prefix="certificate.re"),  # revoke and renew, not issue
    EventFilter(action_prefix="ce"),
    EventFilter(action_prefix="machine_account."),
    EventFilter(category="pki"),
    EventFilter(actor_id="usr_3"),
    EventFilter(actor_type="machine_account"),
    EventFilter(resource_type="ca"),
    EventFilter(resource_id="res_5"),
    EventFilter(outcome="denied"),
    EventFilter(source_ip="2001:db8::1"),
    EventFilter(start_ms=T0 + 10_000),
    EventFilter(end_ms=T0 + 10_000),
    EventFilter(start_ms=T0 + 5_000, end_ms=T0 + 6_000),
    EventFilter(start_ms=T0 + 5_000, end_ms=T0 + 5_000),
    EventFilter(action_prefix="certificate.", outcome="failure", start_ms=T0 + 20_000),
    EventFilter(actor_id="usr_1", resource_type="certificate", resource_id="res_2"),
    EventFilter(category="certificate", actor_type="user", source_ip="203.0.113.1"),
    EventFilter(action="authentication.login", outcome="success", end_ms=T0 + 30_000),
    EventFilter(resource_id="no-such-resource"),
]


@pytest.fixture
async def varied_store(store: AuditStore) -> AuditStore:
    """600 varied events of t1 and 200 of t2 (the same field values: a decoy tenant)."""
    await insert_in_batches(store, varied_events("t1", 600) + varied_events("t2", 200, 9), 250)
    return store


@pytest.mark.parametrize("where", FILTERS, ids=lambda f: repr(f)[12:-1] or "none")
async def test_every_filter_returns_exactly_its_events_in_order(
    varied_store: AuditStore, where: EventFilter
) -> None:
    expected = time_order([e for e in varied_events("t1", 600) if matches(e, where)])
    got = await everything(varied_store, "t1", where)
    assert [e.position for e in got] == expected
    assert {e.tenant_id for e in got} <= {"t1"}
    by_seq = await varied_store.query_by_sequence("t1", where, after_sequence=None, limit=1000)
    assert sorted(e.position for e in by_seq) == expected
    assert [e.sequence for e in by_seq] == sorted(e.sequence for e in by_seq)


async def test_filters_are_not_vacuous(varied_store: AuditStore) -> None:
    """Each filter above (but the empty window and the unknown resource) selects some
    events and leaves out others, so the comparison above says something."""
    events = varied_events("t1", 600)
    for where in FILTERS[1:-1]:
        count = sum(matches(e, where) for e in events)
        if where.start_ms == where.end_ms and where.start_ms is not None:
            assert count == 0
        else:
            assert 0 < count < 600, where


async def test_time_bounds_include_start_and_exclude_end(store: AuditStore) -> None:
    await store.insert([make_event("t1", f"e{i}", T0 + i) for i in range(10)])
    got = await store.query("t1", EventFilter(start_ms=T0 + 3, end_ms=T0 + 7), after=None, limit=50)
    assert [e.timestamp_ms - T0 for e in got] == [3, 4, 5, 6]


async def test_an_action_prefix_is_a_prefix_not_a_pattern(store: AuditStore) -> None:
    await store.insert(
        [
            make_event("t1", "a", T0, "certificate.issue"),
            make_event("t1", "b", T0, "certificate.revoke"),
            make_event("t1", "c", T0, "pki.certificate_template_update"),
            make_event("t1", "d", T0, "discovery.scan_complete"),
        ]
    )

    async def ids(prefix: str) -> list[str]:
        where = EventFilter(action_prefix=prefix)
        return [e.event_id for e in await store.query("t1", where, after=None, limit=10)]

    assert await ids("certificate.") == ["a", "b"]
    assert await ids("certificate.r") == ["b"]
    assert await ids("pki.certificate_") == ["c"]
    assert await ids("%") == []
    assert await ids("_") == []
    assert await ids("certificate") == ["a", "b"]


# --------------------------------------------------------------------------- pagination


def crowded_events(tenant: str, count: int) -> list[IndexedEvent]:
    """``count`` events on 25 distinct timestamps (hundreds share each), ids in random order."""
    rng = random.Random(11)
    ids = [f"evt_{rng.getrandbits(48):012x}_{i}" for i in range(count)]
    events = [
        make_event(tenant, ids[i], T0 + rng.randrange(25), rng.choice(ACTIONS))
        for i in range(count)
    ]
    rng.shuffle(events)
    return events


@pytest.mark.parametrize(
    "where", [EventFilter(), EventFilter(action_prefix="certificate.")], ids=["all", "category"]
)
async def test_keyset_pages_over_10000_events_return_each_once_in_order(
    store: AuditStore, where: EventFilter
) -> None:
    events = crowded_events("t1", 10_000)
    assert await insert_in_batches(store, events, 2_000) == 10_000
    await store.insert(crowded_events("t2", 500))  # the same timestamps in another tenant
    expected = time_order([e for e in events if matches(e, where)])
    walked: list[tuple[int, str]] = []
    after: tuple[int, str] | None = None
    pages = 0
    while True:
        page = await store.query("t1", where, after=after, limit=293)
        pages += 1
        assert len(page) <= 293
        walked.extend(e.position for e in page)
        if len(page) < 293:
            break
        after = page[-1].position
    assert walked == expected
    assert len(set(walked)) == len(walked)
    assert pages == len(expected) // 293 + 1


async def test_sequence_pages_see_events_that_arrive_late_with_old_times(
    store: AuditStore,
) -> None:
    await store.insert([make_event("t1", f"on_time_{i}", T0 + 1000 + i) for i in range(50)])
    first = await store.query_by_sequence("t1", EventFilter(), after_sequence=None, limit=1000)
    last_sequence = first[-1].sequence
    last_position = max(e.position for e in first)
    # Events delayed upstream arrive now, stamped before everything seen so far.
    late = [make_event("t1", f"late_{i}", T0 + i) for i in range(7)]
    await store.insert(late)
    newer = await store.query_by_sequence(
        "t1", EventFilter(), after_sequence=last_sequence, limit=1000
    )
    assert [e.event_id for e in newer] == [e.event_id for e in late]
    assert [e.sequence for e in newer] == list(range(51, 58))
    # The time-ordered cursor of the same poller would have missed them.
    assert await store.query("t1", EventFilter(), after=last_position, limit=1000) == []


async def test_stream_walks_everything_one_small_page_at_a_time(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = crowded_events("t1", 1_000)
    await insert_in_batches(store, events, 500)
    limits: list[int] = []
    real_query = store.query

    async def counting_query(
        tenant_id: str, where: EventFilter, *, after: tuple[int, str] | None, limit: int
    ) -> list[StoredEvent]:
        limits.append(limit)
        return await real_query(tenant_id, where, after=after, limit=limit)

    monkeypatch.setattr(store, "query", counting_query)
    stream = store.stream("t1", EventFilter(), after=None, page=7)
    first = [await anext(stream) for _ in range(3)]
    assert len(limits) == 1  # lazily: one page fetched for the first three events
    rest = [e async for e in stream]
    got = [e.position for e in first + rest]
    assert got == time_order(events)
    assert set(limits) == {7}
    assert len(limits) == 1000 // 7 + 1

    # From a position on, and by sequence.
    middle = got[500]
    tail = [e.position async for e in store.stream("t1", EventFilter(), after=middle, page=9)]
    assert tail == got[501:]
    sequences = [
        e.sequence async for e in store.stream_by_sequence("t1", EventFilter(), after_sequence=990)
    ]
    assert sequences == list(range(991, 1001))


# --------------------------------------------------------------------------- tenants


async def test_no_read_returns_another_tenants_event(store: AuditStore) -> None:
    mine = make_event("t1", "evt_mine", T0, actor_id="usr_shared")
    theirs = make_event("t2", "evt_theirs", T0 + 1, actor_id="usr_shared")
    await store.insert([mine, theirs])
    assert await store.get("t1", "evt_theirs") is None
    assert await store.get("t2", "evt_mine") is None
    assert await store.get("t1", "evt_mine") is not None
    # A filter that matches t2's event, a cursor taken from t2's event, sequence pages.
    for where in (EventFilter(), EventFilter(actor_id="usr_shared"), EventFilter(start_ms=T0 + 1)):
        for after in (None, (T0 - 1, "evt_theirs")):
            got = await store.query("t1", where, after=after, limit=100)
            assert {e.event_id for e in got} <= {"evt_mine"}
        by_seq = await store.query_by_sequence("t1", where, after_sequence=None, limit=100)
        assert {e.event_id for e in by_seq} <= {"evt_mine"}
        streamed = [e.event_id async for e in store.stream("t1", where, after=None, page=1)]
        assert set(streamed) <= {"evt_mine"}
    assert await store.query("t3", EventFilter(), after=None, limit=100) == []


# --------------------------------------------------------------------------- retention


async def test_retention_deletes_only_older_events_in_batches(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutoff = T0 + 1_050
    events = [make_event(f"t{i % 3}", f"e{i}", T0 + i) for i in range(1_500)]
    await insert_in_batches(store, events, 500)
    batches: list[int] = []
    real_batch = store._delete_batch  # type: ignore[attr-defined]

    async def counting_batch(cutoff_ms: int, batch: int) -> int:
        deleted: int = await real_batch(cutoff_ms, batch)
        batches.append(deleted)
        return deleted

    monkeypatch.setattr(store, "_delete_batch", counting_batch)
    assert await store.delete_older_than(cutoff, batch=100) == 1_050
    assert batches == [100] * 10 + [50]
    remaining = [e for t in ("t0", "t1", "t2") for e in await everything(store, t, EventFilter())]
    assert sorted(e.timestamp_ms for e in remaining) == list(range(cutoff, T0 + 1_500))
    assert await store.delete_older_than(cutoff, batch=100) == 0


async def test_sequences_never_restart_after_retention(store: AuditStore) -> None:
    await store.insert([make_event("t1", f"old{i}", T0 + i) for i in range(5)])
    assert await store.delete_older_than(T0 + 100) == 5
    await store.insert([make_event("t1", "new", T0 + 200)])
    stored = await by_sequence(store, "t1")
    assert [(e.event_id, e.sequence) for e in stored] == [("new", 6)]


# --------------------------------------------------------------------------- migrations


async def test_migrate_twice_is_a_no_op(store: AuditStore) -> None:
    await store.insert([make_event("t1", "e1", T0)])
    assert await store.migrate() == 1
    assert await store.migrate() == 1
    assert await store.get("t1", "e1") is not None


async def test_concurrent_migrations_apply_once(store_url: str) -> None:
    """Two stores (two sessions, as two processes would have) migrate an empty database at
    once: both succeed and agree on the version."""
    stores = [open_store(store_url) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(s.migrate() for s in stores))
        assert versions == [1, 1, 1]
        assert await stores[0].insert([make_event("t1", "e1", T0)]) == 1
        assert await stores[1].get("t1", "e1") is not None
    finally:
        for opened in stores:
            await opened.close()


# --------------------------------------------------------------------------- accounts


def token_hash(n: int) -> bytes:
    return bytes([n]) * 32


async def test_machine_accounts(store: AuditStore) -> None:
    splunk = await store.create_account("t1", "splunk", ["audit:read"], token_hash(1))
    admin = await store.create_account("t1", "ops", ["audit:read", "siem:admin"], token_hash(2))
    other = await store.create_account("t2", "sentinel", ["audit:read"], token_hash(3))
    assert splunk.scopes == ("audit:read",)
    assert admin.scopes == ("audit:read", "siem:admin")
    assert splunk.active
    assert len({splunk.account_id, admin.account_id, other.account_id}) == 3

    assert await store.account_by_token_hash(token_hash(1)) == splunk
    assert await store.account_by_token_hash(token_hash(3)) == other
    assert await store.account_by_token_hash(token_hash(9)) is None

    # Oldest first; two accounts made in the same millisecond come in account id order.
    assert await store.list_accounts("t1") == sorted(
        [splunk, admin], key=lambda a: (a.created_ms, a.account_id)
    )
    assert {a.account_id for a in await store.list_accounts()} == {
        splunk.account_id,
        admin.account_id,
        other.account_id,
    }
    assert await store.list_accounts("t9") == []

    assert await store.revoke_account(splunk.account_id) is True
    assert await store.revoke_account(splunk.account_id) is False
    assert await store.revoke_account("ma_unknown") is False
    # A revoked account is still found by its token (the API attributes the attempt to its
    # tenant), marked revoked; the authenticator refuses it.
    revoked = await store.account_by_token_hash(token_hash(1))
    assert revoked is not None and not revoked.active
    assert (revoked.account_id, revoked.tenant_id) == (splunk.account_id, "t1")
    assert await store.account_by_token_hash(token_hash(2)) == admin
    assert await store.account_by_token_hash(token_hash(9)) is None
    listed = {a.account_id: a for a in await store.list_accounts("t1")}
    assert listed[splunk.account_id] == revoked
    revoked_ms = listed[splunk.account_id].revoked_ms
    assert revoked_ms is not None
    assert revoked_ms >= splunk.created_ms
    assert listed[admin.account_id].active


async def test_a_token_hash_belongs_to_one_account(store: AuditStore) -> None:
    await store.create_account("t1", "a", ["audit:read"], token_hash(1))
    with pytest.raises(StoreError) as caught:
        await store.create_account("t2", "b", ["audit:read"], token_hash(1))
    assert not caught.value.retriable


# --------------------------------------------------------------------------- statement timeout


async def test_a_sqlite_read_past_the_statement_timeout_is_interrupted(tmp_path: Path) -> None:
    """A filter no index serves makes the read visit every row of the tenant: far more than
    a millisecond's work. Indexed lookups finish before the progress handler ever runs."""
    url = f"sqlite:///{tmp_path}/audit.db"
    writer = open_store(url)
    try:
        await writer.migrate()
        rows = [make_event("t1", f"e{i:06d}", T0 + i) for i in range(30_000)]
        assert await insert_in_batches(writer, rows, 10_000) == 30_000
        await writer.create_account("t1", "splunk", ["audit:read"], token_hash(1))
    finally:
        await writer.close()
    store = open_store(url, statement_timeout=0.001)
    try:
        rare = EventFilter(outcome="denied")
        with pytest.raises(StoreTimeoutError) as caught:
            await store.query("t1", rare, after=None, limit=1000)
        assert caught.value.retriable
        assert caught.value.timeout == 0.001
        assert "statement timeout" in str(caught.value)
        with pytest.raises(StoreTimeoutError):
            await store.query_by_sequence("t1", rare, after_sequence=None, limit=1000)
        # The same connections go on serving reads that stay within the bound.
        assert await store.get("t1", "e000007") is not None
        assert await store.account_by_token_hash(token_hash(1)) is not None
        page = await store.query("t1", EventFilter(), after=None, limit=10)
        assert [e.event_id for e in page] == [f"e{i:06d}" for i in range(10)]
    finally:
        await store.close()
    unbounded = open_store(url)
    try:
        assert await unbounded.query("t1", rare, after=None, limit=1000) == []
    finally:
        await unbounded.close()


async def test_a_postgres_statement_waiting_past_the_timeout_is_cancelled(
    postgres_url: str,
) -> None:
    """A lock held by another session makes the query wait; the server cancels it at the
    timeout, and the pool's connection serves the next query."""
    store = open_store(postgres_url, statement_timeout=0.3)
    try:
        await store.migrate()
        await store.insert([make_event("t1", "e1", T0)])
        await store.create_account("t1", "splunk", ["audit:read"], token_hash(1))
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            locker.transaction(),
        ):
            await locker.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StoreTimeoutError) as caught:
                await store.query("t1", EventFilter(), after=None, limit=10)
            assert 0.25 < time.monotonic() - started < 5
            assert caught.value.retriable and caught.value.timeout == 0.3
            assert "statement timeout" in str(caught.value)
            with pytest.raises(StoreTimeoutError):
                await store.get("t1", "e1")
            # Another table is not locked: accounts are still found.
            assert await store.account_by_token_hash(token_hash(1)) is not None
        assert await store.get("t1", "e1") is not None
    finally:
        await store.close()


async def test_postgres_migrations_are_not_bounded_by_the_statement_timeout(
    postgres_url: str,
) -> None:
    """Another replica holds the migration lock for longer than the timeout: migrate waits
    for it instead of failing, and the connection has its timeout back afterwards."""
    store = open_store(postgres_url, statement_timeout=0.2)
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as other:
            await other.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            migrating = asyncio.create_task(store.migrate())
            await asyncio.sleep(0.6)
            assert not migrating.done()
            await other.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            assert await asyncio.wait_for(migrating, 30) == 1
            async with other.transaction():
                await other.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(StoreTimeoutError):
                    await store.query("t1", EventFilter(), after=None, limit=10)
    finally:
        await store.close()


# --------------------------------------------------------------------------- errors


async def test_an_unreachable_postgres_is_retriable_and_keeps_the_password() -> None:
    url = f"postgresql://siem:hunter2-pw@127.0.0.1:{free_port()}/audit"
    store = PostgresStore(url, endpoint="postgresql://siem@127.0.0.1/audit", timeout=1.0)
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.get("t1", "e1")
        assert caught.value.retriable
        assert "hunter2-pw" not in str(caught.value)
    finally:
        await store.close()


async def test_a_sqlite_file_that_cannot_be_opened_needs_an_operator(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/missing-directory/audit.db")
    try:
        with pytest.raises(StoreError, match="unable to open") as caught:
            await store.migrate()
        assert not caught.value.retriable
    finally:
        await store.close()


async def test_the_in_memory_store_is_one_private_database() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        assert await store.migrate() == 1
        assert await store.insert([make_event("t1", "e1", T0)]) == 1
        assert await store.get("t1", "e1") is not None  # read on the writer's connection
    finally:
        await store.close()
    with pytest.raises(StoreError, match="after close"):
        await store.get("t1", "e1")
