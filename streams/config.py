"""Typed configuration of the Kafka side: cluster connection and topic names.

These are plain pydantic models so that ``streams`` stays independent of how settings are
loaded; ``connectors.settings`` nests them under ``kafka`` and ``topics`` and fills them from
the environment (``SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS``) or the YAML settings file.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

ClientConfig = dict[str, Any]
"""librdkafka properties as confluent-kafka accepts them (plus its ``logger``)."""

LIBRDKAFKA_LOGGER = logging.getLogger("streams.librdkafka")
"""Where librdkafka's own log lines go, instead of raw lines on stderr."""

TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]


class KafkaConfig(BaseModel):
    """How to reach the Kafka cluster (shared by the publisher, admin and consumers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Comma-separated host:port list of the brokers.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(
        default=None, description="CA bundle used to verify the brokers' certificates."
    )
    client_id: str = "siem-export"
    extra: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Further librdkafka properties. Underscores in keys become dots, so"
            " SIEM_EXPORT_KAFKA__EXTRA__SOCKET_KEEPALIVE_ENABLE=true sets socket.keepalive.enable."
        ),
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts_have_ports(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            raise ValueError("must name at least one host:port")
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{host!r} is not host:port")
        return ",".join(hosts)

    def client_config(self) -> ClientConfig:
        """librdkafka properties common to every client (producer, consumer, admin)."""
        conf: ClientConfig = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
            "logger": LIBRDKAFKA_LOGGER,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update({key.replace("_", "."): value for key, value in self.extra.items()})
        return conf


class TopicsConfig(BaseModel):
    """Names and shapes of the topics siem-export reads and writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: TopicName = Field(default="audit.events", description="Input topic of audit events.")
    events_partitions: int = Field(default=12, ge=1, le=10_000)
    replication_factor: int = Field(
        default=1, ge=1, le=32, description="Replication factor for topics created by siem-export."
    )
    dlq: TopicName = Field(default="siem-export.dlq", description="Dead-letter topic.")
    alerts: TopicName = Field(
        default="siem-export.alerts", description="Destination health alerts for the notifier."
    )
    config: TopicName = Field(
        default="siem-export.config", description="Compacted live per-tenant destination config."
    )
