"""The ``api`` section of the process settings: how ``siem-export serve`` listens and protects.

Environment ``SIEM_EXPORT_API__…``. The page size (default 100, at most 1000) is part of the
published OpenAPI document and therefore not a setting; the time-range bounds, the rate limit,
the store's statement timeout, whether to trust a proxy's forwarded headers and the cursor
secret are. ``cursor_secret`` must be the same on every replica (a cursor
issued by one replica is followed on another); ``cursor_previous_secrets`` still verify
cursors during a rotation. Secrets are ``SecretStr`` so no repr or error message shows them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

MIN_SECRET_LENGTH = 32


class ApiSettings(BaseModel):
    """Settings of the REST API server (``SIEM_EXPORT_API__…``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to listen on; 0.0.0.0 to be reachable from outside the pod.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    cursor_secret: SecretStr | None = Field(
        default=None,
        description=f"HMAC-SHA256 key of the pagination cursors (at least {MIN_SECRET_LENGTH} "
        "characters, the same on every replica). Required by 'serve'.",
    )
    cursor_previous_secrets: tuple[SecretStr, ...] = Field(
        default=(),
        description="Former cursor secrets still accepted while cursors signed with them "
        "are in use (a JSON list); new cursors are always signed with cursor_secret.",
    )
    rate_per_second: float = Field(
        default=10.0,
        gt=0,
        le=100_000,
        description="Requests per second each machine account may make, per replica.",
    )
    burst: int = Field(
        default=20, ge=1, le=1_000_000, description="Requests an idle account may make at once."
    )
    max_range_days: float = Field(
        default=31.0,
        gt=0,
        le=3660,
        description="Longest start..end range one request may ask for (time order and NDJSON).",
    )
    default_window_hours: float = Field(
        default=24.0,
        gt=0,
        le=87_840,
        description="Range served when neither start nor end is given: this many hours up to "
        "now (capped at max_range_days).",
    )

    statement_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Longest one store query of a request may run (an NDJSON stream is read "
        "page by page, each page one query); a query still running is cancelled and the "
        "request answered 503 with a query-timeout problem.",
    )
    trust_forwarded_headers: bool = Field(
        default=False,
        description="Build the absolute next-page URL of the Link header from "
        "X-Forwarded-Proto and X-Forwarded-Host. Only behind a proxy that overwrites both on "
        "every request; X-Forwarded-For is not used.",
    )

    @field_validator("cursor_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("cursor_previous_secrets")
    @classmethod
    def _previous_long_enough(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(s.get_secret_value()) < MIN_SECRET_LENGTH for s in value):
            raise ValueError(f"every secret must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @property
    def max_range_ms(self) -> int:
        return int(self.max_range_days * 86_400_000)

    @property
    def default_window_ms(self) -> int:
        return min(int(self.default_window_hours * 3_600_000), self.max_range_ms)
