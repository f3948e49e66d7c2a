"""Tokens, the authenticator's outcomes, and the audit events of authentications."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from typing import Any

import pytest

from connectors.api.auth import AUDIT_READ, Authenticator, hash_token, new_token
from connectors.api.auth_events import (
    ACTION_FAILURE,
    ACTION_SUCCESS,
    KafkaAuthEvents,
    auth_event,
)
from connectors.api.metrics import ApiMetrics
from connectors.api.problems import Forbidden, Unauthorized
from connectors.index.model import Account, EventFilter, StoredEvent
from streams.catalogue import lookup
from streams.errors import PublishError
from streams.event import validate_event
from tests.api_support import RecordingAuthEvents

pytestmark = pytest.mark.unit


class Accounts:
    """Only the account lookup of the store (what the authenticator uses)."""

    def __init__(self, *accounts: tuple[str, Account]) -> None:
        self.by_hash = {hash_token(token): account for token, account in accounts}

    async def account_by_token_hash(self, token_hash: bytes) -> Account | None:
        return self.by_hash.get(token_hash)

    async def query(
        self, tenant_id: str, where: EventFilter, *, after: tuple[int, str] | None, limit: int
    ) -> list[StoredEvent]:
        raise AssertionError("not used")

    async def query_by_sequence(
        self, tenant_id: str, where: EventFilter, *, after_sequence: int | None, limit: int
    ) -> list[StoredEvent]:
        raise AssertionError("not used")

    def stream(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        page: int = 500,
    ) -> AsyncIterator[StoredEvent]:
        raise AssertionError("not used")

    async def get(self, tenant_id: str, event_id: str) -> StoredEvent | None:
        raise AssertionError("not used")


READER = Account("ma_r", "tnt_a", "reader", ("audit:read",), 1, None)
ADMIN = Account("ma_x", "tnt_a", "admin", ("siem:admin",), 1, None)
REVOKED = Account("ma_old", "tnt_b", "old", ("audit:read",), 1, 2)
T_READER, T_ADMIN, T_REVOKED, T_UNKNOWN = (new_token() for _ in range(4))


def authenticator() -> tuple[Authenticator, RecordingAuthEvents, ApiMetrics]:
    events = RecordingAuthEvents()
    metrics = ApiMetrics()
    store = Accounts((T_READER, READER), (T_ADMIN, ADMIN), (T_REVOKED, REVOKED))
    return Authenticator(store, events, metrics), events, metrics


def test_tokens_are_prefixed_random_and_hashed_with_sha256() -> None:
    token = new_token()
    assert token.startswith("zse_") and len(token) == 47
    assert len(base64.urlsafe_b64decode(token[4:] + "=")) == 32
    assert token != new_token()
    assert len(hash_token(token)) == 32
    assert hash_token(token) == hash_token(token)
    assert token.encode() not in hash_token(token)


async def test_a_reader_is_admitted_and_recorded() -> None:
    auth, events, metrics = authenticator()
    account = await auth.authenticate(f"Bearer {T_READER}", "192.0.2.9", AUDIT_READ)
    assert account == READER
    assert [
        (r.tenant_id, r.account_id, r.outcome, r.source_ip, r.reason) for r in events.records
    ] == [("tnt_a", "ma_r", "success", "192.0.2.9", "ok")]
    assert (
        metrics.registry.get_sample_value(
            "siem_export_api_authentications_total", {"outcome": "success", "reason": "ok"}
        )
        == 1.0
    )


async def test_the_scheme_is_case_insensitive() -> None:
    auth, _, _ = authenticator()
    assert await auth.authenticate(f"bearer  {T_READER}", None, AUDIT_READ) == READER


@pytest.mark.parametrize(
    ("header", "reason", "challenge"),
    [
        (None, "missing_token", 'Bearer realm="siem-export"'),
        ("", "missing_token", 'Bearer realm="siem-export"'),
        ("Basic dXNlcjpwYXNz", "missing_token", 'Bearer realm="siem-export"'),
        ("Bearer", "malformed_token", 'error="invalid_token"'),
        ("Bearer zse_short", "malformed_token", 'error="invalid_token"'),
        (f"Bearer {T_READER}x", "malformed_token", 'error="invalid_token"'),
        (f"Bearer {T_UNKNOWN}", "unknown_token", 'error="invalid_token"'),
    ],
)
async def test_credentials_without_an_account_are_401_and_unattributed(
    header: str | None, reason: str, challenge: str
) -> None:
    auth, events, _ = authenticator()
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(header, "192.0.2.9", AUDIT_READ)
    assert challenge in info.value.headers["WWW-Authenticate"]
    assert info.value.status == 401
    [record] = events.records
    assert (record.tenant_id, record.account_id, record.outcome, record.reason) == (
        None,
        None,
        "failure",
        reason,
    )


async def test_a_revoked_account_is_401_and_attributed_to_its_tenant() -> None:
    auth, events, _ = authenticator()
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(f"Bearer {T_REVOKED}", "192.0.2.9", AUDIT_READ)
    assert "not valid" in info.value.detail  # the same words as an unknown token
    [record] = events.records
    assert (record.tenant_id, record.account_id, record.outcome, record.reason) == (
        "tnt_b",
        "ma_old",
        "failure",
        "revoked_token",
    )


async def test_a_missing_scope_is_403_and_recorded_as_denied() -> None:
    auth, events, _ = authenticator()
    with pytest.raises(Forbidden) as info:
        await auth.authenticate(f"Bearer {T_ADMIN}", None, AUDIT_READ)
    assert info.value.status == 403
    assert (
        'error="insufficient_scope", scope="audit:read"' in info.value.headers["WWW-Authenticate"]
    )
    assert [(r.outcome, r.reason) for r in events.records] == [("denied", "insufficient_scope")]


async def test_a_recorder_that_raises_does_not_fail_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def record(self, *args: Any) -> None:
            raise RuntimeError("boom")

    metrics = ApiMetrics()
    auth = Authenticator(Accounts((T_READER, READER)), Broken(), metrics)
    with caplog.at_level(logging.ERROR):
        assert await auth.authenticate(f"Bearer {T_READER}", None, AUDIT_READ) == READER
    assert "could not be recorded" in caplog.text
    assert (
        metrics.registry.get_sample_value("siem_export_api_auth_events_total", {"result": "lost"})
        == 1.0
    )


# ------------------------------------------------------------------ the Kafka recorder


class FakePublisher:
    """Validates like the real publisher; keeps the events and their futures."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.futures: list[Future[Any]] = []
        self.fail_with = fail_with

    def publish(self, event: Mapping[str, Any]) -> Future[Any]:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(dict(validate_event(event)))
        future: Future[Any] = Future()
        self.futures.append(future)
        return future


def test_the_actions_are_in_the_catalogue_under_machine_account() -> None:
    for action in (ACTION_SUCCESS, ACTION_FAILURE):
        info = lookup(action)
        assert info is not None and info.category == "machine_account"


def test_a_success_is_published_as_api_auth_of_the_tenant() -> None:
    publisher, metrics = FakePublisher(), ApiMetrics()
    KafkaAuthEvents(publisher, metrics, clock=lambda: 1773532800.5).record(
        "tnt_a", "ma_r", "success", "::ffff:192.0.2.1", "ok"
    )
    [sent] = publisher.sent
    assert sent["tenant_id"] == "tnt_a"
    assert sent["action"] == ACTION_SUCCESS
    assert sent["outcome"] == "success"
    assert sent["timestamp"] == "2026-03-15T00:00:00.500Z"
    assert sent["actor"] == {"type": "machine_account", "id": "ma_r", "email": None}
    assert sent["resource"] == {"type": "machine_account", "id": "ma_r", "name": None}
    assert sent["metadata"] == {"reason": "ok", "service": "siem-export-api"}
    assert sent["source_ip"] == "192.0.2.1"
    assert sent["event_id"].startswith("evt_")
    publisher.futures[0].set_result(None)
    assert (
        metrics.registry.get_sample_value(
            "siem_export_api_auth_events_total", {"result": "published"}
        )
        == 1.0
    )


def test_failures_and_denials_use_the_catalogue_actions() -> None:
    publisher = FakePublisher()
    recorder = KafkaAuthEvents(publisher, ApiMetrics())
    recorder.record("tnt_b", "ma_old", "failure", None, "revoked_token")
    recorder.record("tnt_a", "ma_x", "denied", None, "insufficient_scope")
    assert [(e["action"], e["outcome"]) for e in publisher.sent] == [
        (ACTION_FAILURE, "failure"),
        (ACTION_SUCCESS, "denied"),
    ]
    assert len({e["event_id"] for e in publisher.sent}) == 2


def test_without_a_tenant_nothing_is_published_but_it_is_counted() -> None:
    publisher, metrics = FakePublisher(), ApiMetrics()
    KafkaAuthEvents(publisher, metrics).record(None, None, "failure", "192.0.2.1", "unknown_token")
    assert publisher.sent == []
    assert (
        metrics.registry.get_sample_value(
            "siem_export_api_auth_events_total", {"result": "unattributed"}
        )
        == 1.0
    )


def test_an_event_kafka_did_not_store_is_counted_and_logged_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher, metrics = FakePublisher(), ApiMetrics()
    with caplog.at_level(logging.ERROR):
        KafkaAuthEvents(publisher, metrics).record("tnt_a", "ma_r", "success", None, "ok")
        publisher.futures[0].set_exception(PublishError("broker down"))
    assert (
        metrics.registry.get_sample_value("siem_export_api_auth_events_total", {"result": "lost"})
        == 1.0
    )
    assert "was not stored" in caplog.text


def test_a_full_producer_queue_loses_the_event_without_blocking() -> None:
    publisher, metrics = FakePublisher(fail_with=PublishError("queue full")), ApiMetrics()
    KafkaAuthEvents(publisher, metrics).record("tnt_a", "ma_r", "success", None, "ok")
    assert (
        metrics.registry.get_sample_value("siem_export_api_auth_events_total", {"result": "lost"})
        == 1.0
    )


@pytest.mark.parametrize("source_ip", [None, "unix", "", "2001:db8::1"])
def test_every_source_address_makes_a_valid_event(source_ip: str | None) -> None:
    ev = auth_event(
        "tnt_a", None, "failure", source_ip, "revoked_token", now_ms=0, event_id="evt_1"
    )
    assert validate_event(ev)["source_ip"] == (source_ip if source_ip == "2001:db8::1" else None)
