"""The REST API over a real PostgreSQL store: the statement timeout and revoked tokens.

The store is opened as ``siem-export serve`` opens it, with a statement timeout. Another
session locks the events table, so every query of the events waits on the lock: the server
cancels it at the timeout and the API answers 503 with the query-timeout problem, quickly, on
every kind of request; once the lock is gone the same requests succeed. A revoked account's
token is found, refused and attributed to the account's tenant.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import psycopg
import pytest

from connectors.api.auth import hash_token, new_token
from connectors.index.store import AuditStore, open_store
from tests.api_support import (
    T0,
    TENANT_A,
    RecordingAuthEvents,
    api_settings,
    event,
    indexed,
    running_api,
)
from tests.postgres_support import (
    postgres_cluster_fixture,  # noqa: F401 - the fixture "postgres_cluster"
    postgres_url_fixture,  # noqa: F401 - the fixture "postgres_url"
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STATEMENT_TIMEOUT = 0.5
NOW = T0 + 86_400_000
DAY_RANGE = "start=2026-03-15T00:00:00Z&end=2026-03-16T00:00:00Z"


@dataclass
class Served:
    base: str
    url: str
    store: AuditStore
    events: RecordingAuthEvents
    session: aiohttp.ClientSession
    tokens: dict[str, str]
    accounts: dict[str, str]

    async def get(self, path: str, who: str = "reader", **headers: str) -> aiohttp.ClientResponse:
        headers["Authorization"] = f"Bearer {self.tokens[who]}"
        async with self.session.get(self.base + path, headers=headers) as resp:
            await resp.read()
            return resp


@pytest.fixture
async def served(postgres_url: str) -> AsyncIterator[Served]:
    store = open_store(postgres_url, statement_timeout=STATEMENT_TIMEOUT)
    try:
        await store.migrate()
        await store.insert(
            [indexed(event(TENANT_A, f"evt_{i:03d}", T0 + i * 1000)) for i in range(5)]
        )
        tokens, accounts = {}, {}
        for key in ("reader", "revoked"):
            tokens[key] = new_token()
            account = await store.create_account(
                TENANT_A, key, ["audit:read"], hash_token(tokens[key])
            )
            accounts[key] = account.account_id
        assert await store.revoke_account(accounts["revoked"])
        events = RecordingAuthEvents()
        # No request may hang: the client gives up long after the timeout would have fired.
        timeout = aiohttp.ClientTimeout(total=20)
        async with (
            running_api(store, api_settings(), events, clock=lambda: NOW / 1000) as base,
            aiohttp.ClientSession(timeout=timeout) as session,
        ):
            yield Served(base, postgres_url, store, events, session, tokens, accounts)
    finally:
        await store.close()


REQUESTS = [
    (f"/v1/audit-events?{DAY_RANGE}&limit=2", "application/json"),
    ("/v1/audit-events?order=ingestion&limit=2", "application/json"),
    (f"/v1/audit-events?{DAY_RANGE}", "application/x-ndjson"),
    ("/v1/audit-events/evt_001", "application/json"),
]


async def test_queries_that_wait_past_the_statement_timeout_are_503_query_timeouts(
    served: Served,
) -> None:
    async with (
        await psycopg.AsyncConnection.connect(served.url) as locker,
        locker.transaction(),
    ):
        await locker.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        for path, accept in REQUESTS:
            started = time.monotonic()
            resp = await served.get(path, Accept=accept)
            assert time.monotonic() - started < 5, path
            assert resp.status == 503, path
            assert resp.headers["Content-Type"] == "application/problem+json"
            assert resp.headers["Retry-After"] == "1"
            problem = await resp.json(content_type="application/problem+json")
            assert problem["type"] == "urn:zaita:siem-export:problem:query-timeout"
            assert problem["title"] == "Query timed out"
            assert "statement timeout of 0.5 s" in problem["detail"]
    # The lock is gone: the same requests succeed on the same pool.
    for path, accept in REQUESTS:
        resp = await served.get(path, Accept=accept)
        assert resp.status == 200, path
    resp = await served.get(REQUESTS[0][0])
    assert resp.headers["Link"].startswith(f"<{served.base}/v1/audit-events?")


async def test_a_revoked_token_is_refused_and_attributed_to_its_tenant(served: Served) -> None:
    resp = await served.get("/v1/audit-events", who="revoked")
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert [(r.tenant_id, r.account_id, r.outcome, r.reason) for r in served.events.records] == [
        (TENANT_A, served.accounts["revoked"], "failure", "revoked_token")
    ]
    assert (await served.get("/v1/audit-events", who="reader")).status == 200
