"""The REST API over a real socket and a real SQLite store.

What a customer's machine account sees: authentication and scopes, filters, keyset pages walked
through ``Link`` headers, the ingestion order that never skips late events, NDJSON streams,
rate limits and problem documents. Above all, that no parameter, path or cursor ever returns
another tenant's event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.api.auth import hash_token, new_token
from connectors.api.auth_events import KafkaAuthEvents
from connectors.api.metrics import ApiMetrics
from connectors.index.store import AuditStore, open_store
from streams.event import AuditEvent, to_json_bytes, validate_event
from tests.api_support import (
    T0,
    TENANT_A,
    TENANT_B,
    RecordingAuthEvents,
    api_settings,
    event,
    indexed,
    running_api,
)

pytestmark = pytest.mark.component

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = T0 + DAY  # the API's clock: "now" is 2026-03-16T00:00:00Z
DAY_RANGE = "start=2026-03-15T00:00:00Z&end=2026-03-16T00:00:00Z"


@dataclass
class Api:
    base: str
    store: AuditStore
    tokens: dict[str, str]
    accounts: dict[str, str]
    events: RecordingAuthEvents
    metrics: ApiMetrics
    session: aiohttp.ClientSession

    async def get(
        self, path: str, who: str = "a", base: str | None = None, **headers: str
    ) -> tuple[int, dict[str, str], Any]:
        """GET ``path`` (or an absolute URL) as account ``who`` ("" for no token), from ``base``
        or this server."""
        if who:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        url = path if path.startswith("http") else (base or self.base) + path
        async with self.session.get(url, headers=headers) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            is_json = ctype.startswith(("application/json", "application/problem+json"))
            body: Any = json.loads(raw) if is_json and raw else raw
            return resp.status, dict(resp.headers), body


def _seed() -> list[Any]:
    """Events of tenant A across the day (some with equal timestamps) and of tenant B."""
    evs = []
    for i in range(40):
        evs.append(
            event(
                TENANT_A,
                f"evt_a{i:03d}",
                T0 + (i // 4) * HOUR,  # four events share each timestamp
                action=(
                    "certificate.issue",
                    "certificate.revoke",
                    "pki.ca_create",
                    "admin.user_create",
                )[i % 4],
                actor_id=f"usr_{i % 3}",
                actor_type=("user", "machine_account")[i % 2],
                resource_type=("certificate", "certificate_authority")[i % 2],
                resource_id=f"res_{i % 5}",
                outcome=("success", "failure", "denied", "success")[i % 4],
                source_ip=("203.0.113.42", "2001:db8::1")[i % 2],
            )
        )
    for i in range(20):
        evs.append(event(TENANT_B, f"evt_b{i:03d}", T0 + i * HOUR, actor_id="usr_0"))
    # The same event id in both tenants: each must only ever see its own.
    evs.append(event(TENANT_B, "evt_a000", T0, actor_id="usr_b"))
    return evs


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = open_store(f"sqlite://{tmp_path / 'audit.db'}")
    await store.migrate()
    await store.insert([indexed(e) for e in _seed()])
    tokens = {k: new_token() for k in ("a", "b", "admin", "revoked")}
    accounts = {}
    for key, tenant, scopes in (
        ("a", TENANT_A, ["audit:read"]),
        ("b", TENANT_B, ["audit:read"]),
        ("admin", TENANT_A, ["siem:admin"]),
        ("revoked", TENANT_A, ["audit:read"]),
    ):
        account = await store.create_account(tenant, key, scopes, hash_token(tokens[key]))
        accounts[key] = account.account_id
    assert await store.revoke_account(accounts["revoked"])
    events = RecordingAuthEvents()
    metrics = ApiMetrics()
    try:
        async with (
            running_api(
                store, api_settings(), events, metrics=metrics, clock=lambda: NOW / 1000
            ) as base,
            aiohttp.ClientSession() as session,
        ):
            yield Api(base, store, tokens, accounts, events, metrics, session)
    finally:
        await store.close()


class ValidatingPublisher:
    """Checks each event as the platform publisher does, keeps it, and acknowledges it."""

    def __init__(self) -> None:
        self.sent: list[AuditEvent] = []

    def publish(self, event: Mapping[str, Any]) -> Future[Any]:
        self.sent.append(validate_event(event))
        future: Future[Any] = Future()
        future.set_result(None)
        return future


def ids(body: dict[str, Any]) -> list[str]:
    return [e["event_id"] for e in body["data"]]


def next_link(headers: dict[str, str], base: str) -> str | None:
    """The next page's URL: absolute, on the server the request went to."""
    link = headers.get("Link")
    if link is None:
        return None
    m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert m is not None, link
    assert m.group(1).startswith(base + "/v1/audit-events?"), link
    return m.group(1)


async def walk(api: Api, path: str, who: str = "a") -> list[str]:
    """Follow Link headers from ``path`` to the last page; every event id in order."""
    seen: list[str] = []
    url: str | None = path
    for _ in range(10_000):
        assert url is not None
        status, headers, body = await api.get(url, who)
        assert status == 200, body
        seen += ids(body)
        link = next_link(headers, api.base)
        assert (link is None) == (body["next_cursor"] is None)
        if link is None:
            return seen
        url = link
    raise AssertionError("too many pages")


# ------------------------------------------------------------------ authentication


async def test_missing_and_bad_tokens_are_401_with_a_challenge(api: Api) -> None:
    status, headers, body = await api.get("/v1/audit-events", who="")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="siem-export"'
    assert headers["Content-Type"] == "application/problem+json"
    assert body["type"] == "urn:zaita:siem-export:problem:unauthorized"
    for value in (f"Bearer {new_token()}", "Bearer nonsense", f"Basic {api.tokens['a']}"):
        async with api.session.get(
            api.base + "/v1/audit-events", headers={"Authorization": value}
        ) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
    status, headers, _ = await api.get("/v1/audit-events", who="revoked")
    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_a_token_without_audit_read_is_403(api: Api) -> None:
    for path in ("/v1/audit-events", "/v1/audit-events/evt_a000"):
        status, headers, body = await api.get(path, who="admin")
        assert status == 403
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
        assert body["type"].endswith(":insufficient-scope")


async def test_every_authentication_is_recorded(api: Api) -> None:
    await api.get("/v1/audit-events", who="a")
    await api.get("/v1/audit-events", who="admin")
    await api.get("/v1/audit-events", who="revoked")
    await api.get("/v1/audit-events", who="")
    async with api.session.get(
        api.base + "/v1/audit-events", headers={"Authorization": f"Bearer {new_token()}"}
    ) as resp:
        assert resp.status == 401
    got = [(r.tenant_id, r.account_id, r.outcome, r.reason) for r in api.events.records]
    assert got == [
        (TENANT_A, api.accounts["a"], "success", "ok"),
        (TENANT_A, api.accounts["admin"], "denied", "insufficient_scope"),
        # The revoked account's tenant learns that its old token is still in use.
        (TENANT_A, api.accounts["revoked"], "failure", "revoked_token"),
        (None, None, "failure", "missing_token"),
        (None, None, "failure", "unknown_token"),
    ]
    assert all(r.source_ip == "127.0.0.1" for r in api.events.records)


async def test_a_revoked_token_is_published_in_its_tenants_audit_log(api: Api) -> None:
    """Through the real recorder: the event is valid, of the account's tenant, and names it."""
    publisher = ValidatingPublisher()
    recorder = KafkaAuthEvents(publisher, ApiMetrics(), clock=lambda: NOW / 1000)
    async with running_api(api.store, api_settings(), recorder) as base:
        status, headers, body = await api.get("/v1/audit-events", who="revoked", base=base)
        assert status == 401
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert body["detail"] == "The bearer token is not valid."  # as for an unknown token
        status, _, _ = await api.get("/v1/audit-events", who="", base=base)
        assert status == 401
    [sent] = publisher.sent  # the missing token has no tenant: nothing published
    assert sent["tenant_id"] == TENANT_A
    assert sent["action"] == "machine_account.api_auth_failed"
    assert sent["outcome"] == "failure"
    account = {"type": "machine_account", "id": api.accounts["revoked"]}
    assert sent["actor"] == {**account, "email": None}
    assert sent["resource"] == {**account, "name": None}
    assert sent["metadata"] == {"reason": "revoked_token", "service": "siem-export-api"}
    assert sent["source_ip"] == "127.0.0.1"
    assert sent["timestamp"] == "2026-03-16T00:00:00.000Z"


async def test_the_openapi_document_needs_no_token(api: Api) -> None:
    status, headers, body = await api.get("/v1/openapi.json", who="")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["openapi"].startswith("3.1")


# ------------------------------------------------------------------ tenant isolation


async def test_no_parameter_path_or_cursor_reaches_another_tenant(api: Api) -> None:
    # The default query and a wide one: only the caller's tenant.
    for path in ("/v1/audit-events?limit=1000", f"/v1/audit-events?{DAY_RANGE}&limit=1000"):
        _, _, body = await api.get(path)
        assert {e["tenant_id"] for e in body["data"]} == {TENANT_A}
        assert len(body["data"]) == 40
    # A tenant parameter is not a filter: it is refused.
    for param in ("tenant_id", "tenant", "tenantId"):
        status, _, body = await api.get(f"/v1/audit-events?{param}={TENANT_B}")
        assert status == 400
        assert body["invalid_params"] == [{"name": param, "reason": "unknown parameter"}]
    # Tenant B's event ids are not found by tenant A, and a shared id gives each its own.
    status, _, body = await api.get("/v1/audit-events/evt_b001")
    assert status == 404
    assert body["type"].endswith(":not-found")
    _, _, mine = await api.get("/v1/audit-events/evt_a000", who="a")
    _, _, theirs = await api.get("/v1/audit-events/evt_a000", who="b")
    assert (mine["tenant_id"], theirs["tenant_id"]) == (TENANT_A, TENANT_B)
    assert theirs["actor"]["id"] == "usr_b"
    # Tenant B's cursors are refused to tenant A, in both orders.
    for query in (f"{DAY_RANGE}&limit=2", "order=ingestion&limit=2"):
        _, _, page = await api.get(f"/v1/audit-events?{query}", who="b")
        cursor = page["next_cursor"]
        assert cursor
        status, _, body = await api.get(f"/v1/audit-events?{query}&cursor={cursor}", who="a")
        assert status == 400
        assert body["invalid_params"][0]["name"] == "cursor"
        assert "not issued to you" in body["invalid_params"][0]["reason"]
    # Filters that tenant B's events match still return nothing of B's to A.
    _, _, body = await api.get(f"/v1/audit-events?{DAY_RANGE}&actor_id=usr_b")
    assert body["data"] == []
    # NDJSON streams too.
    _, _, raw = await api.get(f"/v1/audit-events?{DAY_RANGE}", Accept="application/x-ndjson")
    assert {json.loads(line)["tenant_id"] for line in raw.splitlines()} == {TENANT_A}


async def test_a_cursor_is_bound_to_its_filters_and_order(api: Api) -> None:
    query = f"{DAY_RANGE}&action=certificate.*&limit=2"
    _, _, page = await api.get(f"/v1/audit-events?{query}")
    cursor = page["next_cursor"]
    for changed in (
        f"{DAY_RANGE}&action=pki.*&limit=2",
        f"{DAY_RANGE}&limit=2",
        "start=2026-03-15T00:00:00.001Z&end=2026-03-16T00:00:00Z&action=certificate.*",
        f"{query}&outcome=success",
    ):
        status, _, body = await api.get(f"/v1/audit-events?{changed}&cursor={cursor}")
        assert status == 400, changed
        assert "other filter parameters" in body["invalid_params"][0]["reason"]
    status, _, body = await api.get(f"/v1/audit-events?{query}&order=ingestion&cursor={cursor}")
    assert status == 400
    assert "order=timestamp" in body["invalid_params"][0]["reason"]
    # Only the page size may change.
    status, _, body = await api.get(
        f"/v1/audit-events?{DAY_RANGE}&action=certificate.*&limit=50&cursor={cursor}"
    )
    assert status == 200
    assert len(body["data"]) == 18


async def test_a_tampered_cursor_is_refused(api: Api) -> None:
    _, _, page = await api.get(f"/v1/audit-events?{DAY_RANGE}&limit=2")
    cursor: str = page["next_cursor"]
    payload, mac = cursor.split(".")
    swapped = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    for bad in (f"{swapped}.{mac}", f"{payload}.{mac[::-1]}", "x", cursor + "x"):
        status, _, body = await api.get(f"/v1/audit-events?{DAY_RANGE}&limit=2&cursor={bad}")
        assert status == 400
        assert body["invalid_params"][0]["name"] == "cursor"


# ------------------------------------------------------------------ queries and pages


async def test_pages_walk_the_window_in_order_each_event_once(api: Api) -> None:
    seen = await walk(api, f"/v1/audit-events?{DAY_RANGE}&limit=3")
    assert seen == [f"evt_a{i:03d}" for i in range(40)]  # (timestamp, event_id) order
    assert await walk(api, f"/v1/audit-events?{DAY_RANGE}&limit=40") == seen
    _, headers, body = await api.get(f"/v1/audit-events?{DAY_RANGE}&limit=40")
    assert body["next_cursor"] is None and "Link" not in headers


async def test_the_next_link_is_absolute_and_trusts_a_proxy_only_when_told(api: Api) -> None:
    query = f"/v1/audit-events?{DAY_RANGE}&limit=3"
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "siem.example.com"}
    _, headers, body = await api.get(query, **proxy)
    link = next_link(headers, api.base)
    assert link == f"{api.base}{query}&cursor={body['next_cursor']}"
    _, headers, _ = await api.get(query, Host="audit.internal:8080")
    assert headers["Link"].startswith("<http://audit.internal:8080/v1/audit-events?")
    trusting = api_settings(trust_forwarded_headers=True)
    async with running_api(api.store, trusting, clock=lambda: NOW / 1000) as base:
        _, headers, body = await api.get(query, base=base, **proxy)
        assert headers["Link"] == (
            f'<https://siem.example.com{query}&cursor={body["next_cursor"]}>; rel="next"'
        )
        # In ingestion order too (a poller follows the link forever).
        _, headers, _ = await api.get("/v1/audit-events?order=ingestion", base=base, **proxy)
        assert headers["Link"].startswith("<https://siem.example.com/v1/audit-events?")


async def test_the_body_is_the_event_exactly_as_delivered(api: Api) -> None:
    delivered = to_json_bytes(_seed()[5])
    _, _, parsed = await api.get("/v1/audit-events/evt_a005", Accept="application/json")
    assert parsed == json.loads(delivered)
    async with api.session.get(
        api.base + "/v1/audit-events/evt_a005",
        headers={"Authorization": f"Bearer {api.tokens['a']}"},
    ) as resp:
        assert await resp.read() == delivered


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("action=certificate.issue", [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]),
        ("action=certificate.*", [i for i in range(40) if i % 4 in (0, 1)]),
        ("category=pki", [i for i in range(40) if i % 4 == 2]),
        ("actor_id=usr_1", [i for i in range(40) if i % 3 == 1]),
        ("actor_type=machine_account", [i for i in range(40) if i % 2]),
        ("resource_type=certificate_authority", [i for i in range(40) if i % 2]),
        ("resource_id=res_2", [i for i in range(40) if i % 5 == 2]),
        ("outcome=denied", [i for i in range(40) if i % 4 == 2]),
        ("source_ip=2001:DB8:0::1", [i for i in range(40) if i % 2]),
        ("start=2026-03-15T09:00:00Z", list(range(36, 40))),
        ("end=2026-03-15T01:00:00Z", [0, 1, 2, 3]),
        ("start=2026-03-15T02:00:00%2B01:00&end=2026-03-15T02:00:00Z", [4, 5, 6, 7]),
        ("outcome=failure&actor_id=usr_0&resource_id=res_3", [33]),
    ],
)
async def test_filters(api: Api, query: str, expected: list[int]) -> None:
    if "start=" not in query and "end=" not in query:
        query += "&" + DAY_RANGE
    status, _, body = await api.get(f"/v1/audit-events?{query}&limit=1000")
    assert status == 200, body
    assert ids(body) == [f"evt_a{i:03d}" for i in expected]


async def test_the_default_window_is_the_last_24_hours(api: Api) -> None:
    # The API's clock says 2026-03-16T00:00Z: the whole seeded day is in the window.
    assert len(ids((await api.get("/v1/audit-events?limit=1000"))[2])) == 40
    # Five hours later the window starts at 05:00 on the 15th: the events of 05:00 to 09:00.
    later = (NOW + 5 * HOUR) / 1000
    async with running_api(api.store, api_settings(), clock=lambda: later) as base:
        _, _, body = await api.get("/v1/audit-events?limit=1000", base=base)
    assert ids(body) == [f"evt_a{i:03d}" for i in range(20, 40)]


async def test_the_window_is_kept_by_the_cursor(api: Api) -> None:
    _, _, first = await api.get("/v1/audit-events?limit=30")
    # Even from a replica whose clock is a day later, the next page uses the first window.
    async with running_api(api.store, api_settings(), clock=lambda: (NOW + DAY) / 1000) as base:
        _, _, second = await api.get(
            f"/v1/audit-events?limit=30&cursor={first['next_cursor']}", base=base
        )
    assert ids(first) + ids(second) == [f"evt_a{i:03d}" for i in range(40)]


async def test_ingestion_order_never_skips_late_events(api: Api) -> None:
    seen: list[str] = []
    url = "/v1/audit-events?order=ingestion&limit=7"
    for _ in range(20):
        status, headers, body = await api.get(url)
        assert status == 200
        seen += ids(body)
        assert body["next_cursor"]  # always: a poller comes back with it
        url = next_link(headers, api.base) or ""
        if not body["data"]:
            break
    assert sorted(seen) == sorted(f"evt_a{i:03d}" for i in range(40)) and len(seen) == 40
    # Events arrive late, with timestamps older than everything already seen.
    late = [event(TENANT_A, f"evt_late{i}", T0 - DAY + i) for i in range(3)]
    await api.store.insert([indexed(e) for e in late])
    status, _, body = await api.get(url)
    assert ids(body) == ["evt_late0", "evt_late1", "evt_late2"]
    # The time order over the first window would never have returned them.
    assert "evt_late0" not in await walk(api, f"/v1/audit-events?{DAY_RANGE}&limit=50")
    # Caught up: an empty page that keeps the position.
    _, _, empty = await api.get(f"/v1/audit-events?order=ingestion&cursor={body['next_cursor']}")
    assert empty["data"] == [] and empty["next_cursor"]


async def test_ingestion_order_filters_by_time_without_a_range_limit(api: Api) -> None:
    status, _, body = await api.get(
        "/v1/audit-events?order=ingestion&start=2020-01-01T00:00:00Z&end=2026-03-15T01:00:00Z"
    )
    assert status == 200
    assert ids(body) == ["evt_a000", "evt_a001", "evt_a002", "evt_a003"]


async def test_ndjson_streams_the_window_one_event_per_line(api: Api) -> None:
    status, headers, raw = await api.get(
        f"/v1/audit-events?{DAY_RANGE}&action=certificate.*", Accept="application/x-ndjson"
    )
    assert status == 200
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Transfer-Encoding"] == "chunked"
    assert raw.endswith(b"\n")
    lines = raw.splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [
        f"evt_a{i:03d}" for i in range(40) if i % 4 in (0, 1)
    ]
    assert lines[0] == to_json_bytes(_seed()[0])
    # It resumes from a cursor of the same query.
    _, _, page = await api.get(f"/v1/audit-events?{DAY_RANGE}&limit=38")
    _, _, rest = await api.get(
        f"/v1/audit-events?{DAY_RANGE}&cursor={page['next_cursor']}",
        Accept="application/x-ndjson",
    )
    assert [json.loads(line)["event_id"] for line in rest.splitlines()] == ["evt_a038", "evt_a039"]


async def test_ndjson_refuses_page_parameters(api: Api) -> None:
    status, _, body = await api.get(
        "/v1/audit-events?limit=5&order=ingestion", Accept="application/x-ndjson"
    )
    assert status == 400
    assert {p["name"] for p in body["invalid_params"]} == {"limit", "order"}


async def test_ndjson_of_a_large_range_arrives_complete(api: Api) -> None:
    many = [event(TENANT_A, f"evt_n{i:05d}", T0 + 2 * DAY + i // 7) for i in range(3000)]
    await api.store.insert([indexed(e) for e in many])
    status, _, raw = await api.get(
        "/v1/audit-events?start=2026-03-17T00:00:00Z&end=2026-03-18T00:00:00Z",
        Accept="application/x-ndjson",
    )
    assert status == 200
    got = [json.loads(line)["event_id"] for line in raw.splitlines()]
    assert got == [e["event_id"] for e in many]
    assert api.metrics.registry.get_sample_value("siem_export_api_streamed_events_total") == 3000


# ------------------------------------------------------------------ protection


async def test_bad_parameters_are_400_problems_naming_each(api: Api) -> None:
    status, headers, body = await api.get(
        "/v1/audit-events?limit=5000&start=yesterday&colour=red&outcome=ok"
    )
    assert status == 400
    assert headers["Content-Type"] == "application/problem+json"
    assert body["type"] == "urn:zaita:siem-export:problem:invalid-parameters"
    assert body["status"] == 400 and body["title"] and body["detail"]
    assert {p["name"] for p in body["invalid_params"]} == {"limit", "start", "colour", "outcome"}
    status, _, body = await api.get(
        "/v1/audit-events?start=2026-01-01T00:00:00Z&end=2026-03-01T00:00:00Z"
    )
    assert status == 400
    assert "31 days" in body["invalid_params"][0]["reason"]
    status, _, body = await api.get("/v1/audit-events/evt_a000?pretty=1")
    assert status == 400
    status, _, body = await api.get("/v1/audit-events/_bad%20id")
    assert status == 400
    assert body["invalid_params"][0]["name"] == "event_id"


async def test_a_long_request_line_still_gets_a_problem_document(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # Longer than aiohttp's default request line (8190), which its parser answers with a
    # plain-text 400 before any of our code runs; within the API's own bound.
    long_id = "x" * 20_000
    with caplog.at_level(logging.WARNING):
        status, headers, body = await api.get(f"/v1/audit-events?actor_id={long_id}")
    assert status == 400
    assert headers["Content-Type"] == "application/problem+json"
    assert [p["name"] for p in body["invalid_params"]] == ["actor_id"]
    assert not [r for r in caplog.records if "custom kwargs" in r.getMessage()]


async def test_the_rate_limit_answers_429_with_retry_after(api: Api) -> None:
    async with running_api(
        api.store,
        api_settings(rate_per_second=0.5, burst=3),
        clock=lambda: NOW / 1000,
    ) as base:
        statuses = []
        for who in ("a", "a", "a", "a", "b"):
            status, headers, body = await api.get("/v1/audit-events/evt_a000", who, base=base)
            statuses.append(status)
            if status == 429:
                assert headers["Retry-After"] in ("1", "2")  # 2 s at 0.5/s, less time passed
                assert body["type"].endswith(":rate-limited")
    # The fourth request of account a is refused; account b has its own bucket.
    assert statuses == [200, 200, 200, 429, 200]


async def test_concurrent_clients_each_get_their_own_tenant(api: Api) -> None:
    async def one(who: str) -> set[str]:
        _, _, body = await api.get(f"/v1/audit-events?{DAY_RANGE}&limit=1000", who)
        return {e["tenant_id"] for e in body["data"]}

    results = await asyncio.gather(*(one("a" if i % 2 else "b") for i in range(20)))
    assert results == [{TENANT_A} if i % 2 else {TENANT_B} for i in range(20)]


async def test_a_query_past_the_statement_timeout_is_a_503_not_a_hang(tmp_path: Path) -> None:
    """A filter no index serves makes SQLite visit each of 30,000 rows: far more than the
    1 ms allowed. The token lookup and the lookup of one event stay well within it."""
    url = f"sqlite://{tmp_path / 'big.db'}"
    writer = open_store(url)
    token = new_token()
    one = indexed(event(TENANT_A, "evt_000000", T0))
    # Only the indexed columns matter here; the bodies are copies of one event.
    rows = [
        dataclasses.replace(one, event_id=f"evt_{i:06d}", timestamp_ms=T0 + i)
        for i in range(30_000)
    ]
    try:
        await writer.migrate()
        for start in range(0, len(rows), 10_000):
            await writer.insert(rows[start : start + 10_000])
        await writer.create_account(TENANT_A, "a", ["audit:read"], hash_token(token))
    finally:
        await writer.close()
    store = open_store(url, statement_timeout=0.001)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            running_api(store, api_settings(), clock=lambda: NOW / 1000) as base,
            aiohttp.ClientSession(headers=headers, timeout=timeout) as session,
        ):
            for accept in ("application/json", "application/x-ndjson"):
                path = f"/v1/audit-events?{DAY_RANGE}&outcome=denied"
                async with session.get(base + path, headers={"Accept": accept}) as resp:
                    assert resp.status == 503, accept
                    assert resp.headers["Content-Type"] == "application/problem+json"
                    assert resp.headers["Retry-After"] == "1"
                    problem = await resp.json(content_type="application/problem+json")
                assert problem["type"] == "urn:zaita:siem-export:problem:query-timeout"
                assert problem["status"] == 503
                assert "statement timeout" in problem["detail"]
            async with session.get(base + "/v1/audit-events/evt_000042") as resp:
                assert resp.status == 200
    finally:
        await store.close()


# ------------------------------------------------------------------ the accounts commands


def _cli(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIEM_EXPORT_")}
    env["SIEM_EXPORT_STORE__URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "connectors", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_accounts_commands_show_a_token_once_and_revoke_it(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'accounts.db'}"
    made = _cli(["accounts", "create", "--tenant", TENANT_A, "--scope", "audit:read"], url)
    assert made.returncode == 0, made.stderr
    fields = dict(line.split(": ", 1) for line in made.stdout.splitlines())
    assert fields["tenant_id"] == TENANT_A and fields["scopes"] == "audit:read"
    assert re.fullmatch(r"zse_[A-Za-z0-9_-]{43}", fields["token"])
    other = _cli(
        [
            "accounts",
            "create",
            "--tenant",
            TENANT_B,
            "--scope",
            "audit:read",
            "--scope",
            "siem:admin",
            "--name",
            "SIEM pull",
        ],
        url,
    )
    assert other.returncode == 0, other.stderr
    # The token works against the store the command wrote, and only its hash is kept.
    store = open_store(url)
    try:
        account = await store.account_by_token_hash(hash_token(fields["token"]))
        assert account is not None and account.account_id == fields["account_id"]
    finally:
        await store.close()
    assert fields["token"].encode() not in (tmp_path / "accounts.db").read_bytes()

    listed = _cli(["accounts", "list"], url)
    assert listed.returncode == 0
    assert "zse_" not in listed.stdout
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert rows[0][:4] == ["ACCOUNT_ID", "TENANT_ID", "NAME", "SCOPES"]
    assert [(r[1], r[2], r[3], r[5]) for r in rows[1:]] == [
        (TENANT_A, "api", "audit:read", "-"),
        (TENANT_B, "SIEM pull", "audit:read,siem:admin", "-"),
    ]
    only_b = _cli(["accounts", "list", "--tenant", TENANT_B], url).stdout.splitlines()
    assert len(only_b) == 2

    revoked = _cli(["accounts", "revoke", fields["account_id"]], url)
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked {fields['account_id']}"
    assert _cli(["accounts", "revoke", fields["account_id"]], url).returncode == 1
    assert _cli(["accounts", "revoke", "ma_nosuch"], url).returncode == 1
    listed = _cli(["accounts", "list", "--tenant", TENANT_A], url).stdout.splitlines()
    assert listed[1].split("\t")[5] != "-"


@pytest.mark.parametrize(
    "args",
    [
        ["accounts", "create", "--tenant", "bad tenant", "--scope", "audit:read"],
        ["accounts", "create", "--tenant", TENANT_A, "--scope", "audit:write"],
        ["accounts", "create", "--tenant", TENANT_A],
        ["accounts", "create", "--tenant", TENANT_A, "--scope", "audit:read", "--name", " "],
    ],
)
def test_accounts_create_refuses_bad_input_with_2(args: list[str], tmp_path: Path) -> None:
    proc = _cli(args, f"sqlite://{tmp_path / 'x.db'}")
    assert proc.returncode == 2, proc.stderr
    assert "zse_" not in proc.stdout


def test_a_wrong_store_url_is_a_settings_error() -> None:
    proc = _cli(["accounts", "list"], "mysql://nope")
    assert proc.returncode == 2
    assert "SIEM_EXPORT_STORE__URL" in proc.stderr
