"""Configuration of the webhook connector: the process settings and one tenant's destination.

``WebhookSettings`` is the ``webhook`` section of the process settings (environment
``SIEM_EXPORT_WEBHOOK__…``): what the operator decides for every tenant (which networks may be
reached, timeouts, connection bounds, health thresholds). ``WebhookDestination`` is one
tenant's ``webhook:`` entry in the destinations file: what the customer asked for (URL,
headers, signing secrets, format, batching, TLS client material).

Both reject unknown keys. Secrets (header values, signing secrets, the Splunk token) are
``SecretStr`` so that a repr, a log line or a validation error never shows them.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.health import HealthThresholds
from connectors.webhook.signing import parse_secret

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 token characters: what a header name may contain.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the connector sets itself; a destination may not override them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-splunk-request-channel",
    }
)


class WebhookSettings(BaseModel):
    """Process-wide webhook settings (``SIEM_EXPORT_WEBHOOK__…``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_networks: tuple[IPNetwork, ...] = Field(
        default=(),
        description="CIDRs that destinations may resolve to even though they are loopback, "
        "private, link-local… (a JSON list, e.g. '[\"10.20.0.0/16\"]'). Empty: only public "
        "addresses are reached.",
    )
    allow_http: bool = Field(
        default=False, description="Allow plain http:// destinations (https only by default)."
    )
    timeout_seconds: float = Field(
        default=15.0, gt=0, le=300, description="Whole request timeout (connect, send, answer)."
    )
    connect_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Connection (and TLS handshake) timeout."
    )
    max_connections: int = Field(
        default=512, ge=1, description="Open connections of the process, all hosts together."
    )
    max_connections_per_host: int = Field(
        default=16,
        ge=1,
        description="Open connections to one host; tenants that share a SIEM share these.",
    )
    health: HealthThresholds = Field(default_factory=HealthThresholds)
    disabled_retry_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often a disabled endpoint's lane checks (locally, without a request) "
        "whether the configuration re-enabled it.",
    )
    reload_seconds: float = Field(
        default=10.0, gt=0, description="How often the destinations file is checked for changes."
    )
    splunk_host: str = Field(
        default="zaita", min_length=1, description="Default 'host' of Splunk HEC envelopes."
    )

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            return value
        networks: list[IPNetwork] = []
        for number, item in enumerate(value):
            try:
                networks.append(ipaddress.ip_network(str(item), strict=True))
            except ValueError as exc:
                raise ValueError(f"entry {number} is not a CIDR network: {exc}") from None
        return tuple(networks)


class SplunkOptions(BaseModel):
    """The Splunk HTTP Event Collector preset (``format: splunk_hec``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr = Field(description="HEC token, sent as 'Authorization: Splunk <token>'.")
    channel: str | None = Field(
        default=None,
        description="X-Splunk-Request-Channel (a GUID); derived from tenant and URL if unset.",
    )
    host: str | None = None
    source: str = "zaita:audit"
    sourcetype: str = "_json"
    index: str | None = None

    @field_validator("channel")
    @classmethod
    def _channel_is_guid(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F-]{32,36}", value):
            raise ValueError("must be a GUID such as 0b6a1c1e-4b40-4a34-9b6b-1b1c1d1e1f10")
        return value


class WebhookDestination(BaseModel):
    """One tenant's webhook endpoint, from the destinations file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="https:// endpoint that receives the POSTs.")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers (tokens, API keys)."
    )
    signing_secret: SecretStr | list[SecretStr] | None = Field(
        default=None,
        description="Standard Webhooks secret(s), 'whsec_<base64>'; a list while rotating.",
    )
    format: Literal["generic", "splunk_hec"] = "generic"
    max_events_per_request: int = Field(
        default=1, ge=1, le=1000, description="Events per POST when a backlog exists."
    )
    batch_encoding: Literal["json_array", "ndjson"] = Field(
        default="json_array", description="Body of a multi-event generic request."
    )
    splunk: SplunkOptions | None = None
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of CAs to trust instead of the system store."
    )
    client_cert: Path | None = Field(default=None, description="PEM client certificate (mTLS).")
    client_key: Path | None = Field(default=None, description="PEM key of client_cert.")

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; put them in headers")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the connector")
            if any(c in secret.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break or NUL in its value")
        return value

    @field_validator("signing_secret")
    @classmethod
    def _secrets_parse(
        cls, value: SecretStr | list[SecretStr] | None
    ) -> SecretStr | list[SecretStr] | None:
        for number, secret in enumerate(_as_list(value), start=1):
            try:
                parse_secret(secret.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"secret #{number}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WebhookDestination:
        if self.format == "splunk_hec" and self.splunk is None:
            raise ValueError("format splunk_hec needs a 'splunk' section with at least 'token'")
        if self.format != "splunk_hec" and self.splunk is not None:
            raise ValueError("'splunk' options apply only with format: splunk_hec")
        if self.format == "splunk_hec" and "authorization" in {h.lower() for h in self.headers}:
            raise ValueError("format splunk_hec sets Authorization from splunk.token")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return self

    def secrets(self) -> list[str]:
        """The signing secrets in the order given (empty: requests are not signed)."""
        return [s.get_secret_value() for s in _as_list(self.signing_secret)]

    def endpoint(self) -> str:
        """The URL without query string: safe for logs, metrics-free alerts and errors."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _as_list(value: SecretStr | list[SecretStr] | None) -> list[SecretStr]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
