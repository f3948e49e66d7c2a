"""Webhook settings and destination validation, and Retry-After parsing."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import ValidationError

from connectors.errors import SettingsError
from connectors.settings import load_settings
from connectors.webhook.config import WebhookDestination, WebhookSettings
from connectors.webhook.transport import parse_retry_after

pytestmark = pytest.mark.unit
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the public spec example


def test_allowed_networks_and_http_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS", '["10.20.0.0/16", "fd00::/8"]')
    monkeypatch.setenv("SIEM_EXPORT_WEBHOOK__ALLOW_HTTP", "true")
    monkeypatch.setenv("SIEM_EXPORT_WEBHOOK__HEALTH__FAILING_AFTER_FAILURES", "2")
    settings = load_settings()
    assert settings.webhook.allowed_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert settings.webhook.allow_http is True
    assert settings.webhook.health.failing_after_failures == 2


def test_defaults_are_the_safe_ones() -> None:
    settings = WebhookSettings()
    assert settings.allowed_networks == ()
    assert settings.allow_http is False
    assert settings.timeout_seconds == 15.0


@pytest.mark.parametrize("value", ['["10.0.0.0/33"]', '["10.0.0.1/8"]', '["nope"]'])
def test_a_bad_network_names_the_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS" in str(info.value)
    assert "entry 0 is not a CIDR network" in str(info.value)


def test_unknown_webhook_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORK", "[]")
    with pytest.raises(SettingsError, match="did you mean SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS"):
        load_settings()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "ftp://x.example/"}, "absolute https"),
        ({"url": "https://user:pw@x.example/"}, "credentials"),
        ({"url": "https://x.example/", "headers": {"Content-Type": "text/plain"}}, "set by"),
        ({"url": "https://x.example/", "headers": {"X-Key": "a\r\nInjected: 1"}}, "line break"),
        ({"url": "https://x.example/", "headers": {"Bad Name": "v"}}, "not a valid HTTP token"),
        ({"url": "https://x.example/", "format": "splunk_hec"}, "needs a 'splunk' section"),
        ({"url": "https://x.example/", "splunk": {"token": "t"}}, "only with format"),
        ({"url": "https://x.example/", "client_cert": "/c.pem"}, "go together"),
        ({"url": "https://x.example/", "signing_secret": "whsec_c2hvcnQ="}, "secret #1"),
        ({"url": "https://x.example/", "max_events_per_request": 0}, "greater than or equal"),
    ],
)
def test_destination_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WebhookDestination.model_validate(fields)


def test_endpoint_drops_the_query_and_secrets_stay_hidden() -> None:
    dest = WebhookDestination.model_validate(
        {
            "url": "https://x.example:8443/in?code=topsecretcode",
            "headers": {"Authorization": "Bearer topsecrettoken"},
            "signing_secret": [SECRET, SECRET],
        }
    )
    assert dest.endpoint() == "https://x.example:8443/in"
    assert "topsecrettoken" not in repr(dest)
    assert SECRET not in repr(dest)
    assert dest.secrets() == [SECRET, SECRET]


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0
    assert parse_retry_after("99999999") == 86_400.0
