"""The app's defences against a misbehaving store, NDJSON streaming, and content negotiation.

A small in-memory store stands in for the index here, so that it can misbehave on purpose:
return another tenant's row, go backwards, fail, or hold a stream open. The real SQLite
store is exercised in ``tests/component/test_api.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from connectors.api.app import make_app
from connectors.api.auth import hash_token, new_token
from connectors.api.config import ApiSettings
from connectors.api.stream import wants_ndjson
from connectors.index.errors import StoreError, StoreTimeoutError, StoreUnavailableError
from connectors.index.model import Account, EventFilter, StoredEvent
from streams.event import to_json_bytes
from tests.api_support import (
    T0,
    TENANT_A,
    TENANT_B,
    RecordingAuthEvents,
    event,
    running_api,
)

pytestmark = pytest.mark.unit

TOKEN = new_token()
ACCOUNT = Account("ma_1", TENANT_A, "reader", ("audit:read",), 0, None)
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
RANGE = "start=2026-03-15T00:00:00Z&end=2026-03-16T00:00:00Z"


def row(tenant: str, n: int, ts: int, seq: int) -> StoredEvent:
    body = to_json_bytes(event(tenant, f"evt_{n:05d}", ts))
    return StoredEvent(tenant, f"evt_{n:05d}", ts, seq, body)


class MemoryStore:
    """Returns ``rows`` as they are (no filtering): tests decide what the store says."""

    def __init__(self, rows: list[StoredEvent]) -> None:
        self.rows = rows
        self.error: Exception | None = None
        self.fail_at = 2  # the row of a stream that raises ``error``
        self.hold: asyncio.Event | None = None
        self.stream_closed = asyncio.Event()
        self.calls: list[tuple[str, str]] = []

    async def account_by_token_hash(self, token_hash: bytes) -> Account | None:
        return ACCOUNT if token_hash == hash_token(TOKEN) else None

    async def query(
        self, tenant_id: str, where: EventFilter, *, after: tuple[int, str] | None, limit: int
    ) -> list[StoredEvent]:
        self.calls.append(("query", tenant_id))
        if self.error:
            raise self.error
        return self.rows[:limit]

    async def query_by_sequence(
        self, tenant_id: str, where: EventFilter, *, after_sequence: int | None, limit: int
    ) -> list[StoredEvent]:
        self.calls.append(("query_by_sequence", tenant_id))
        return self.rows[:limit]

    async def stream(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        page: int = 500,
    ) -> AsyncIterator[StoredEvent]:
        self.calls.append(("stream", tenant_id))
        try:
            for i, r in enumerate(self.rows):
                if i == 1 and self.hold is not None:
                    await self.hold.wait()
                if i == self.fail_at and self.error is not None:
                    raise self.error
                yield r
        finally:
            self.stream_closed.set()

    async def get(self, tenant_id: str, event_id: str) -> StoredEvent | None:
        self.calls.append(("get", tenant_id))
        return next((r for r in self.rows if r.event_id == event_id), None)


async def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={**HEADERS, **headers}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def test_another_tenants_row_from_the_store_is_never_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore([row(TENANT_A, 1, T0, 1), row(TENANT_B, 2, T0 + 1, 2)])
    async with running_api(store) as base:
        with caplog.at_level(logging.ERROR):
            for path in (
                f"/v1/audit-events?{RANGE}",
                "/v1/audit-events?order=ingestion",
                "/v1/audit-events/evt_00002",
            ):
                status, headers, body = await fetch(base + path)
                assert status == 500, path
                assert headers["Content-Type"] == "application/problem+json"
                assert TENANT_B.encode() not in body
    assert "another tenant's event" in caplog.text
    # The store was always asked with the caller's tenant.
    assert {tenant for _, tenant in store.calls} == {TENANT_A}


async def test_a_page_that_goes_backwards_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore([row(TENANT_A, 2, T0 + 5, 2), row(TENANT_A, 1, T0, 1)])
    async with running_api(store) as base:
        with caplog.at_level(logging.ERROR):
            assert (await fetch(f"{base}/v1/audit-events?{RANGE}"))[0] == 500
            assert (await fetch(f"{base}/v1/audit-events?order=ingestion"))[0] == 500
    assert "out of (timestamp, event_id) order" in caplog.text
    assert "out of ingestion order" in caplog.text


async def test_store_failures_become_503_or_500_problems() -> None:
    store = MemoryStore([])
    async with running_api(store) as base:
        store.error = StoreUnavailableError("database is locked")
        status, headers, body = await fetch(f"{base}/v1/audit-events")
        assert (status, headers["Retry-After"]) == (503, "1")
        assert b"locked" not in body  # the store's words stay in the log
        store.error = StoreError("syntax error")
        status, headers, _ = await fetch(f"{base}/v1/audit-events")
        assert status == 500
        assert headers["Content-Type"] == "application/problem+json"


async def test_a_query_cancelled_at_the_statement_timeout_is_a_503_query_timeout() -> None:
    store = MemoryStore([row(TENANT_A, i, T0 + i, i) for i in range(1, 4)])
    store.error = StoreTimeoutError("canceling statement due to statement timeout", 2.5)
    store.fail_at = 0
    async with running_api(store) as base:
        for accept in ("application/json", "application/x-ndjson"):
            status, headers, body = await fetch(f"{base}/v1/audit-events?{RANGE}", Accept=accept)
            assert status == 503, accept
            assert headers["Content-Type"] == "application/problem+json"
            assert headers["Retry-After"] == "3"  # as long as the query was allowed to run
            problem = json.loads(body)
            assert problem["type"] == "urn:zaita:siem-export:problem:query-timeout"
            assert problem["title"] == "Query timed out"
            assert "statement timeout of 2.5 s" in problem["detail"]
            assert b"canceling" not in body  # the store's words stay in the log


async def test_ndjson_lines_leave_before_the_store_is_done() -> None:
    store = MemoryStore([row(TENANT_A, i, T0 + i, i) for i in range(1, 4)])
    store.hold = asyncio.Event()
    async with (
        running_api(store) as base,
        aiohttp.ClientSession() as session,
        session.get(
            f"{base}/v1/audit-events?{RANGE}",
            headers={**HEADERS, "Accept": "application/x-ndjson"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        # The handler flushes in batches, so the first line only leaves with the batch; the
        # store is still holding its second row when the headers arrive.
        assert not store.stream_closed.is_set()
        store.hold.set()
        lines = (await asyncio.wait_for(resp.read(), 10)).splitlines()
    assert [line[13:22] for line in lines] == [b"evt_00001", b"evt_00002", b"evt_00003"]


async def test_a_failure_mid_stream_drops_the_connection() -> None:
    store = MemoryStore([row(TENANT_A, i, T0 + i, i) for i in range(1, 5)])
    store.error = StoreUnavailableError("connection lost")
    async with (
        running_api(store) as base,
        aiohttp.ClientSession() as session,
        session.get(
            f"{base}/v1/audit-events?{RANGE}",
            headers={**HEADERS, "Accept": "application/x-ndjson"},
        ) as resp,
    ):
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)
    await asyncio.wait_for(store.stream_closed.wait(), 5)


async def test_another_tenants_row_mid_stream_drops_the_connection() -> None:
    store = MemoryStore([row(TENANT_A, 1, T0, 1), row(TENANT_B, 2, T0 + 1, 2)])
    async with (
        running_api(store) as base,
        aiohttp.ClientSession() as session,
        session.get(
            f"{base}/v1/audit-events?{RANGE}",
            headers={**HEADERS, "Accept": "application/x-ndjson"},
        ) as resp,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)


@pytest.mark.parametrize(
    ("accept", "ndjson"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/x-ndjson", True),
        ("application/x-ndjson, */*;q=0.1", True),
        ("Application/X-NDJSON", True),
        ("application/json, application/x-ndjson", False),
        ("application/json;q=0.5, application/x-ndjson", True),
        ("application/x-ndjson;q=0", False),
        ("application/x-ndjson;q=abc", False),
    ],
)
def test_ndjson_is_chosen_only_when_preferred(accept: str | None, ndjson: bool) -> None:
    assert wants_ndjson(accept) is ndjson


async def test_router_errors_are_problems_too() -> None:
    async with running_api(MemoryStore([])) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/v2/nothing") as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"] == "application/problem+json"
            assert (await resp.json())["type"].endswith(":not-found")
        async with session.delete(f"{base}/v1/audit-events", headers=HEADERS) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET"
            assert (await resp.json())["status"] == 405


def test_the_app_needs_a_cursor_secret() -> None:
    with pytest.raises(ValueError, match="cursor_secret"):
        make_app(MemoryStore([]), ApiSettings(), RecordingAuthEvents())
