"""Process settings of every siem-export command, loaded with pydantic-settings.

Sources, highest priority first: keyword arguments (used by tests and the CLI), environment
variables ``SIEM_EXPORT_<KEY>`` with ``__`` between nesting levels
(``SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS``), then an optional YAML file named by ``--settings``
or ``SIEM_EXPORT_SETTINGS_FILE``. A wrong value or an unknown key in any source is a
``SettingsError`` naming the key and why; the CLI turns it into exit code 2. Values are never
echoed back in errors, so a mistyped password cannot leak into logs.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from connectors.api.config import ApiSettings
from connectors.errors import SettingsError
from connectors.index.config import StoreSettings
from connectors.ops import OpsConfig
from connectors.storage.config import StorageSettings
from connectors.syslog.config import SyslogSettings
from connectors.webhook.config import WebhookSettings
from streams.config import KafkaConfig, TopicsConfig
from streams.engine.config import EngineConfig

ENV_PREFIX = "SIEM_EXPORT_"
NESTED_DELIMITER = "__"
SETTINGS_FILE_ENV = "SIEM_EXPORT_SETTINGS_FILE"
# Variables with our prefix that steer the process but are not settings fields.
PROCESS_ENV = frozenset({SETTINGS_FILE_ENV, "SIEM_EXPORT_KAFKA_CACHE"})


class Settings(BaseSettings):
    """Every setting of siem-export; nested models group them by component."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        case_sensitive=False,
        frozen=True,
    )

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ops: OpsConfig = Field(default_factory=OpsConfig)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    syslog: SyslogSettings = Field(default_factory=SyslogSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    destinations_file: Path | None = Field(
        default=None, description="YAML file of per-tenant destinations."
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")


def _yaml_settings(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"cannot read settings file: {exc.strerror}"], str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SettingsError([f"{where}not valid YAML"], str(path)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(["the top level must be a mapping of setting names"], str(path))
    return data


def _model_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {name.lower(): info for name, info in model.model_fields.items()}


def _nested_model(info: FieldInfo) -> type[BaseModel] | None:
    ann = info.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _is_mapping_field(info: FieldInfo) -> bool:
    origin = getattr(info.annotation, "__origin__", None)
    return origin is dict


def unknown_env_keys(environ: Mapping[str, str]) -> list[str]:
    """Problems for every ``SIEM_EXPORT_*`` variable that names no setting (with a suggestion)."""
    problems: list[str] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in PROCESS_ENV:
            continue
        parts = upper[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER)
        model: type[BaseModel] | None = Settings
        for depth, part in enumerate(parts):
            if model is None:
                problems.append(f"{name}: unknown setting")
                break
            fields = _model_fields(model)
            if part not in fields:
                guess = difflib.get_close_matches(part, list(fields), n=1)
                hint = ""
                if guess:
                    hint_parts = [*parts[:depth], guess[0]]
                    hint = (
                        f" (did you mean {ENV_PREFIX}{NESTED_DELIMITER.join(hint_parts).upper()}?)"
                    )
                problems.append(f"{name}: unknown setting{hint}")
                break
            info = fields[part]
            if _is_mapping_field(info):
                break
            model = _nested_model(info)
    return problems


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + NESTED_DELIMITER.join(str(p).upper() for p in loc)


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error.get("type") == "extra_forbidden":
        return f"{key}: unknown setting"
    return f"{key} ({_env_name(loc)}): {error.get('msg', 'invalid')}"


def load_settings(settings_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from overrides, environment and YAML file; raise SettingsError if wrong."""
    env = os.environ
    if settings_file is None and env.get(SETTINGS_FILE_ENV):
        settings_file = Path(env[SETTINGS_FILE_ENV])
    file_data = _yaml_settings(settings_file)
    problems = unknown_env_keys(env)
    if problems:
        raise SettingsError(problems, "the environment")

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if file_data:
                sources.append(InitSettingsSource(settings_cls, init_kwargs=file_data))
            return tuple(sources)

    try:
        loaded = _Loaded(**overrides)
    except ValidationError as exc:
        source = str(settings_file) if settings_file else None
        raise SettingsError([_describe(e) for e in exc.errors()], source) from exc
    return Settings.model_construct(**dict(loaded))
