"""The ``api`` settings section: defaults, secrets, and loading from the environment."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from connectors.api.config import ApiSettings
from connectors.errors import SettingsError
from connectors.settings import load_settings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    api = ApiSettings()
    assert (api.host, api.port, api.cursor_secret) == ("127.0.0.1", 8080, None)
    assert (api.rate_per_second, api.burst) == (10.0, 20)
    assert api.max_range_ms == 31 * 86_400_000
    assert api.default_window_ms == 86_400_000
    assert api.statement_timeout_seconds == 10.0
    assert api.trust_forwarded_headers is False


def test_a_short_secret_is_refused_without_being_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("SIEM_EXPORT_API__CURSOR_SECRET", "hunter2")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "at least 32" in str(info.value)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValidationError):
        ApiSettings(cursor_previous_secrets=["short"])


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SIEM_EXPORT_"):
            monkeypatch.delenv(name)


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("SIEM_EXPORT_API__CURSOR_SECRET", "s" * 32)
    monkeypatch.setenv("SIEM_EXPORT_API__CURSOR_PREVIOUS_SECRETS", '["' + "p" * 40 + '"]')
    monkeypatch.setenv("SIEM_EXPORT_API__RATE_PER_SECOND", "2.5")
    monkeypatch.setenv("SIEM_EXPORT_API__MAX_RANGE_DAYS", "7")
    api = load_settings().api
    assert api.cursor_secret is not None
    assert api.cursor_secret.get_secret_value() == "s" * 32
    assert [s.get_secret_value() for s in api.cursor_previous_secrets] == ["p" * 40]
    assert api.rate_per_second == 2.5
    assert api.max_range_ms == 7 * 86_400_000
    monkeypatch.setenv("SIEM_EXPORT_API__STATEMENT_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("SIEM_EXPORT_API__TRUST_FORWARDED_HEADERS", "true")
    api = load_settings().api
    assert (api.statement_timeout_seconds, api.trust_forwarded_headers) == (2.5, True)
    for bad in ("0", "-1", "3601"):
        monkeypatch.setenv("SIEM_EXPORT_API__STATEMENT_TIMEOUT_SECONDS", bad)
        with pytest.raises(SettingsError, match="SIEM_EXPORT_API__STATEMENT_TIMEOUT_SECONDS"):
            load_settings()
    monkeypatch.delenv("SIEM_EXPORT_API__STATEMENT_TIMEOUT_SECONDS")
    monkeypatch.setenv("SIEM_EXPORT_API__BURTS", "3")
    with pytest.raises(SettingsError, match="SIEM_EXPORT_API__BURST"):
        load_settings()
