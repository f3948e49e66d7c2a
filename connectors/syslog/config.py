"""Configuration of the syslog connector: the process settings and one tenant's destination.

``SyslogSettings`` is the ``syslog`` section of the process settings (``SIEM_EXPORT_SYSLOG__…``):
the message format every tenant gets (facility, hostname, app name, SD-ID, BOM), timeouts and
the health thresholds. ``SyslogDestination`` is a tenant's ``syslog:`` entry in the
destinations file: where to send and how (host, port, transport, framing, TLS material).
Both reject unknown keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.health import HealthThresholds
from connectors.syslog.encoder import DEFAULT_MAX_DATAGRAM, MAX_UDP_PAYLOAD, SyslogFormat

Transport = Literal["udp", "tcp", "tls", "relp", "relp_tls"]
_DEFAULT_PORTS: dict[str, int] = {
    "udp": 514,
    "tcp": 514,
    "tls": 6514,
    # RELP has no IANA port; 2514 is what rsyslog's documentation and most setups use.
    "relp": 2514,
    "relp_tls": 2514,
}
TLS_TRANSPORTS = frozenset({"tls", "relp_tls"})


class SyslogSettings(BaseModel):
    """Process-wide syslog settings (``SIEM_EXPORT_SYSLOG__…``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    facility: int = Field(default=13, ge=0, le=23, description="RFC 5424 facility (13: audit).")
    hostname: str = Field(default="zaita", description="HOSTNAME of every message.")
    app_name: str = Field(default="siem-export", description="APP-NAME of every message.")
    sd_id: str = Field(
        default="audit@32473",
        description="SD-ID of the structured data (name@<your IANA enterprise number>).",
    )
    utf8_bom: bool = Field(
        default=False,
        description="Start MSG with a UTF-8 BOM (RFC 5424 allows it; JSON parsers reject it).",
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    write_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait for the socket to take a batch."
    )
    confirm_seconds: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="TCP/TLS: how long a connection must stay up after the collector's TCP "
        "stack took the bytes before they count as delivered (see docs/syslog.md).",
    )
    relp_window: int = Field(
        default=128, ge=1, le=4096, description="RELP: most messages awaiting an answer."
    )
    idle_close_seconds: float = Field(
        default=300.0, gt=0, le=86400, description="Close a connection unused this long."
    )
    reload_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="How often the destinations file is checked."
    )
    disabled_retry_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How often a disabled destination's lane checks whether it was re-enabled.",
    )
    health: HealthThresholds = Field(default_factory=HealthThresholds)

    def message_format(self) -> SyslogFormat:
        """The encoder's view of these settings (raises ValueError naming a bad field)."""
        return SyslogFormat(
            facility=self.facility,
            hostname=self.hostname,
            app_name=self.app_name,
            sd_id=self.sd_id,
            utf8_bom=self.utf8_bom,
        )

    @model_validator(mode="after")
    def _format_is_valid(self) -> SyslogSettings:
        self.message_format()
        return self


class SyslogDestination(BaseModel):
    """One tenant's syslog collector, from the destinations file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, max_length=253, description="Collector host name or address.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Default 6514 for tls, 514 otherwise."
    )
    transport: Transport = Field(
        default="tls", description="tls (recommended), tcp, udp, relp or relp_tls."
    )
    framing: Literal["octet_counting", "lf"] = Field(
        default="octet_counting",
        description="TCP/TLS framing: RFC 6587 octet counting, or one message per line for "
        "legacy receivers.",
    )
    max_datagram_bytes: int = Field(
        default=DEFAULT_MAX_DATAGRAM,
        ge=480,
        le=MAX_UDP_PAYLOAD,
        description="UDP: the largest message sent; larger ones are never truncated (oversize).",
    )
    oversize: Literal["dead_letter", "pause"] = Field(
        default="dead_letter",
        description="UDP, a message above max_datagram_bytes: dead_letter (the lane moves on) "
        "or pause (the destination counts as misconfigured until max_datagram_bytes is raised).",
    )
    ca_bundle: Path | None = Field(default=None, description="PEM CAs instead of the system's.")
    client_cert: Path | None = Field(default=None, description="PEM client certificate (mTLS).")
    client_key: Path | None = Field(default=None, description="PEM key of client_cert.")
    server_name: str | None = Field(
        default=None, description="Name to verify in the collector's certificate (default: host)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SyslogDestination:
        tls_only = (self.ca_bundle, self.client_cert, self.client_key, self.server_name)
        if self.transport not in TLS_TRANSPORTS and any(v is not None for v in tls_only):
            raise ValueError(
                "ca_bundle, client_cert, client_key and server_name need tls or relp_tls"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if self.transport not in ("tcp", "tls") and self.framing != "octet_counting":
            raise ValueError("framing applies to tcp and tls only")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS[self.transport]

    def endpoint(self) -> str:
        """``transport://host:port``: for logs, alerts and errors."""
        return f"{self.transport}://{self.host}:{self.effective_port}"
