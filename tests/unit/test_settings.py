"""Settings: environment, YAML file, precedence, and errors that name the key (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from connectors.errors import SettingsError
from connectors.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("SIEM_EXPORT_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.topics.events == "audit.events"
    assert s.topics.events_partitions == 12
    assert (s.topics.dlq, s.topics.alerts, s.topics.config) == (
        "siem-export.dlq",
        "siem-export.alerts",
        "siem-export.config",
    )


def test_environment_with_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1234,127.0.0.2:1235")
    monkeypatch.setenv("SIEM_EXPORT_TOPICS__EVENTS", "tenant.audit")
    monkeypatch.setenv("SIEM_EXPORT_KAFKA__EXTRA__SOCKET_KEEPALIVE_ENABLE", "true")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:1234,127.0.0.2:1235"
    assert s.topics.events == "tenant.audit"
    assert s.kafka.client_config()["socket.keepalive.enable"] == "true"


def test_yaml_file_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "settings.yaml"
    f.write_text(
        "kafka:\n  bootstrap_servers: 10.1.1.1:9092\n  client_id: from-file\n"
        "topics:\n  events_partitions: 24\n"
    )
    monkeypatch.setenv("SIEM_EXPORT_KAFKA__CLIENT_ID", "from-env")
    s = load_settings(f)
    assert s.kafka.bootstrap_servers == "10.1.1.1:9092"
    assert s.kafka.client_id == "from-env"
    assert s.topics.events_partitions == 24


def test_settings_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("topics: {events: other.events}\n")
    monkeypatch.setenv("SIEM_EXPORT_SETTINGS_FILE", str(f))
    assert load_settings().topics.events == "other.events"


def test_unknown_env_key_is_named_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVER", "127.0.0.1:9092")
    with pytest.raises(SettingsError) as info:
        load_settings()
    msg = str(info.value)
    assert "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVER: unknown setting" in msg
    assert "did you mean SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS?" in msg


def test_unknown_yaml_key_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("topics:\n  events: a\n  evnts: b\n")
    with pytest.raises(SettingsError) as info:
        load_settings(f)
    assert str(f) in str(info.value)
    assert "topics.evnts: unknown setting" in str(info.value)


def test_wrong_values_all_reported_without_echoing_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEM_EXPORT_TOPICS__EVENTS_PARTITIONS", "0")
    monkeypatch.setenv("SIEM_EXPORT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SIEM_EXPORT_KAFKA__SASL_MECHANISM", "hunter2-not-a-mechanism")
    with pytest.raises(SettingsError) as info:
        load_settings()
    msg = str(info.value)
    assert "topics.events_partitions (SIEM_EXPORT_TOPICS__EVENTS_PARTITIONS)" in msg
    assert "kafka.sasl_mechanism (SIEM_EXPORT_KAFKA__SASL_MECHANISM)" in msg
    assert "hunter2" not in msg


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="top level must be a mapping"):
        load_settings(f)


def test_missing_settings_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(tmp_path / "nope.yaml")


def test_cli_exits_2_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SIEM_EXPORT_TOPICS__EVENTZ": "x", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "connectors", "topics", "create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "SIEM_EXPORT_TOPICS__EVENTZ: unknown setting" in proc.stderr
    assert "Traceback" not in proc.stderr
