"""Configuration of the storage connector: the process settings and one tenant's destination.

``StorageSettings`` is the ``storage`` section of the process settings
(``SIEM_EXPORT_STORAGE__…``): what the operator decides for every tenant (when an open file
moves from memory to a temporary file, how much closed files waiting for an upload may hold in
memory and how many may wait, upload slots, part sizes, timeouts, health thresholds).
``StorageDestination`` is one tenant's ``storage:`` entry in the destinations file: where the
files go (``s3://``, ``azure://`` or ``gs://`` url), their format, when a file closes, how
objects are named and encrypted, and the provider's credentials.

Both reject unknown keys, and a destination rejects the options of another provider
("kms_key_id applies to s3 only"). Azure secrets are ``SecretStr``, and no message quotes a
value, so a validation error never shows one.

Credentials: S3 uses the standard AWS chain of the process (environment, profile, web
identity), or assumes ``role_arn`` with it. Azure uses ``connection_string``, or
``account_url`` with ``sas_token``, ``account_key`` or (neither) the process's Azure identity.
GCS uses ``credentials_file`` or the process's application default credentials.

Defaults: JSON Lines, gzip, a file at least every 5 minutes. gzip because audit JSON shrinks
several times over (storage, egress and upload time all drop), every ingestion path named by
the spec (Splunk's S3 inputs, Sentinel's blob connectors, Chronicle's GCS feeds, Athena)
reads ``.gz`` objects as they are, and the objects are stored as gzip files, not with a
Content-Encoding, so what a customer downloads is what the SHA-256 in the metadata covers.

Network reach: ``endpoint_url`` and ``account_url`` may point anywhere the process can reach.
The writers must refuse ``http://`` unless ``StorageSettings.allow_http`` (see
``uses_plain_http``); which addresses a customer may name at all is the writers' policy too.
"""

from __future__ import annotations

import binascii
import math
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors.health import HealthThresholds
from connectors.storage.naming import DEFAULT_TEMPLATE, check_template, normalize_prefix

Provider = Literal["s3", "azure", "gcs"]
FileFormat = Literal["jsonl", "json"]
Compression = Literal["gzip", "none"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MAX_INTERVAL_SECONDS = 86400.0

_SCHEMES: dict[str, Provider] = {"s3": "s3", "azure": "azure", "gs": "gcs"}
_URL_SCHEME = {provider: scheme for scheme, provider in _SCHEMES.items()}
# Options that only one provider understands; naming them for another is a mistake.
_PROVIDER_OPTIONS: dict[str, tuple[Provider, ...]] = {
    "endpoint_url": ("s3", "gcs"),
    "region": ("s3",),
    "path_style": ("s3",),
    "kms_key_id": ("s3",),
    "role_arn": ("s3",),
    "external_id": ("s3",),
    "connection_string": ("azure",),
    "sas_token": ("azure",),
    "account_key": ("azure",),
    "account_url": ("azure",),
    "encryption_scope": ("azure",),
    "kms_key_name": ("gcs",),
    "credentials_file": ("gcs",),
}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_IPV4 = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_AZURE_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# Shapes of the plain-text options: (pattern, what the message says they must be).
_OPTION_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "region": (re.compile(r"[a-z0-9][a-z0-9-]{0,31}"), "must be a region name such as eu-west-1"),
    "kms_key_id": (
        re.compile(r"[A-Za-z0-9:/_.=+@,-]{1,2048}"),
        "must be a KMS key id, key ARN or alias",
    ),
    "role_arn": (
        re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}"),
        "must be arn:aws:iam::<12-digit account>:role/<name>",
    ),
    "external_id": (
        re.compile(r"[A-Za-z0-9+=,.@:/_-]{2,1224}"),
        "must have 2-1224 letters, digits or + = , . @ : / _ -",
    ),
    "encryption_scope": (
        re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{2,62}"),
        "must have 3-63 letters, digits or hyphens",
    ),
    "kms_key_name": (
        re.compile(r"projects/[^/\s]+/locations/[^/\s]+/keyRings/[^/\s]+/cryptoKeys/[^/\s]+"),
        "must be projects/P/locations/L/keyRings/R/cryptoKeys/K",
    ),
}
_AZURITE_BLOB = "http://127.0.0.1:10000/devstoreaccount1"


def parse_duration(text: str | float) -> float:
    """Seconds of a duration: ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"1.5h"``, or a plain
    number of seconds (``300``, ``"300"``: what a duration serialises back to).

    Raises ValueError naming the value for zero, negative, non-finite or unreadable ones.
    Units are lower case only: ``M`` could be read as months.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"duration {text!r} is not a string or a number")
    if isinstance(text, str):
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"duration {text!r} is not a number followed by s, m, h or d "
                "(e.g. '30s', '5m', '1h', '1d')"
            )
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        seconds = float(text)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


class StorageSettings(BaseModel):
    """Process-wide storage settings (``SIEM_EXPORT_STORAGE__…``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spill_threshold_bytes: int = Field(
        default=8 * MiB,
        ge=0,
        le=GiB,
        description="Stored (compressed) bytes an open file keeps in memory; beyond them its "
        "content moves to an anonymous temporary file in spill_dir. 0: always on disk.",
    )
    open_memory_bytes: int = Field(
        default=256 * MiB,
        ge=0,
        le=64 * GiB,
        description="Stored content of open files that may stay in memory, all files together "
        "(each also within spill_threshold_bytes). Past it, the open files holding most move "
        "their content to anonymous temporary files in spill_dir until a quarter of it is "
        "free, so a backlog over thousands of tenants costs disk, not RAM.",
    )
    spill_dir: Path | None = Field(
        default=None, description="Directory of the temporary files (default: the system's)."
    )
    compression_level: int = Field(
        default=6, ge=1, le=9, description="gzip level: 1 fastest, 9 smallest, 6 the usual default."
    )
    multipart_threshold_bytes: int = Field(
        default=16 * MiB,
        ge=5 * MiB,
        le=5 * GiB,
        description="Files of at least this size are uploaded in parts (S3 multipart, Azure "
        "blocks, GCS resumable upload); smaller ones in one request.",
    )
    part_size_bytes: int = Field(
        default=8 * MiB,
        ge=5 * MiB,
        le=5 * GiB,
        description="Size of each uploaded part but the last (S3 needs at least 5 MiB).",
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_concurrent_uploads: int = Field(
        default=16, ge=1, le=256, description="Files written at the same time (all tenants)."
    )
    drain_concurrent_uploads: int = Field(
        default=64,
        ge=1,
        le=256,
        description="Files written at the same time while the engine waits for them: at "
        "shutdown, and for partitions being revoked (never fewer than max_concurrent_uploads).",
    )
    waiting_memory_bytes: int = Field(
        default=32 * MiB,
        ge=0,
        le=16 * GiB,
        description="Content of closed files waiting for an upload slot that may stay in "
        "memory, all files together; a file that would pass it waits in an anonymous temporary "
        "file in spill_dir instead. 0: every waiting file on disk.",
    )
    max_waiting_files: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Closed files not yet written (waiting for a slot or uploading), all "
        "tenants together. Once reached, a tenant whose destination has such files starts no "
        "new file: its events are refused for a while and stay in Kafka.",
    )
    max_waiting_events: int = Field(
        default=2_000_000,
        ge=1,
        le=1_000_000_000,
        description="Events in those files (the engine keeps about 8 bytes an event until "
        "the file is written); reaching it has the same effect as max_waiting_files.",
    )
    upload_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Longest wait for one upload request (a whole small file, or one part).",
    )
    allow_http: bool = Field(
        default=False,
        description="Allow plain http:// endpoint_url / account_url (local S3 servers and "
        "emulators); https only by default. Writers check it with uses_plain_http().",
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

    @field_validator("spill_dir")
    @classmethod
    def _spill_dir_usable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError("is not an existing directory")
        if value is not None and not os.access(value, os.W_OK | os.X_OK):
            raise ValueError("is not writable by this process")
        return value


class StorageDestination(BaseModel):
    """One tenant's bucket (or container) and how files are written there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        description="s3://bucket/prefix, azure://container/prefix or gs://bucket/prefix; the "
        "prefix is optional and stored without outer slashes."
    )
    format: FileFormat = Field(
        default="jsonl", description="jsonl: one event per line; json: one JSON array per file."
    )
    compression: Compression = Field(
        default="gzip",
        description="gzip (objects end in .gz; content type application/gzip) or none.",
    )
    compression_level: int | None = Field(
        default=None,
        ge=1,
        le=9,
        description="gzip level of this destination's files, 1 fastest to 9 smallest (default: "
        "the process's SIEM_EXPORT_STORAGE__COMPRESSION_LEVEL, 6). Ignored without gzip.",
    )
    interval: float = Field(
        default=300.0,
        ge=1,
        le=MAX_INTERVAL_SECONDS,
        description="Longest time a file stays open after its first event, as a duration "
        "('30s', '5m', '1h', '1d'; default 5m); held here in seconds.",
    )
    max_events: int = Field(
        default=100_000, ge=1, le=1_000_000, description="A file closes at this many events."
    )
    max_bytes: int = Field(
        default=64 * MiB,
        ge=KiB,
        le=GiB,
        description="A file closes once its uncompressed content reaches this size (it may pass "
        "it by the one event that crossed it).",
    )
    path_template: str = Field(
        default=DEFAULT_TEMPLATE,
        description="Object key template (see connectors.storage.naming); must start with "
        "'{prefix}/' and contain {partition} and {first_offset}.",
    )
    # S3
    endpoint_url: str | None = Field(
        default=None,
        description="S3: an S3-compatible service instead of AWS; GCS: another JSON API root "
        "(an emulator). http(s)://host[:port].",
    )
    region: str | None = Field(default=None, description="S3 region (default: the AWS chain's).")
    path_style: bool = Field(
        default=False,
        description="Path-style requests (host/bucket/key); default true when endpoint_url is set.",
    )
    kms_key_id: str | None = Field(
        default=None,
        description="SSE-KMS with this key (id, ARN or alias); without it every object is "
        "written with SSE-S3 (AES256).",
    )
    role_arn: str | None = Field(
        default=None, description="IAM role in the customer's account to assume for writing."
    )
    external_id: str | None = Field(
        default=None, description="External id the customer's role trust policy requires."
    )
    # Azure
    connection_string: SecretStr | None = Field(
        default=None, description="Storage account connection string (holds the account)."
    )
    account_url: str | None = Field(
        default=None, description="https://<account>.blob.core.windows.net, without a SAS."
    )
    sas_token: SecretStr | None = Field(default=None, description="SAS for account_url.")
    account_key: SecretStr | None = Field(
        default=None, description="Access key (base64) of the account of account_url."
    )
    encryption_scope: str | None = Field(
        default=None, description="Encryption scope (customer-managed key) of every blob."
    )
    # GCS
    kms_key_name: str | None = Field(
        default=None,
        description="Cloud KMS key of every object: projects/…/locations/…/keyRings/…/cryptoKeys/…",
    )
    credentials_file: Path | None = Field(
        default=None,
        description="Service account JSON key file (default: application default credentials).",
    )

    @model_validator(mode="before")
    @classmethod
    def _path_style_default(cls, data: Any) -> Any:
        # A custom S3 endpoint (SeaweedFS, MinIO, Ceph…) rarely has per-bucket DNS names.
        if (
            isinstance(data, dict)
            and str(data.get("url", "")).startswith("s3://")
            and data.get("endpoint_url") is not None
            and "path_style" not in data
        ):
            return {**data, "path_style": True}
        return data

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in _SCHEMES:
            raise ValueError("must be s3://bucket/prefix, azure://container/prefix or gs://…")
        bucket, _, prefix = rest.partition("/")
        _check_bucket(_SCHEMES[scheme], bucket)
        prefix = normalize_prefix(prefix)
        return f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"

    @field_validator("path_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)

    @field_validator("endpoint_url", "account_url")
    @classmethod
    def _service_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_service_url(value)
        return value

    @field_validator(*_OPTION_RULES)
    @classmethod
    def _option_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern, rule = _OPTION_RULES[str(info.field_name)]
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(rule)
        return value

    @field_validator("connection_string")
    @classmethod
    def _connection_string(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = _connection_parts(value)
            if not parts.keys() & {"accountname", "blobendpoint", "usedevelopmentstorage"}:
                raise ValueError("must name AccountName or BlobEndpoint")
            if "blobendpoint" in parts:
                try:
                    _check_service_url(parts["blobendpoint"])
                except ValueError as exc:
                    raise ValueError(f"BlobEndpoint {exc}") from None
        return value

    @field_validator("sas_token")
    @classmethod
    def _sas_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value().removeprefix("?")
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            raise ValueError("must be a SAS query string without spaces")
        if "sig=" not in token:
            raise ValueError("must be a SAS query string with a sig= parameter")
        return SecretStr(token)

    @field_validator("account_key")
    @classmethod
    def _account_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            binascii.a2b_base64(value.get_secret_value(), strict_mode=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be the base64 access key of the storage account") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StorageDestination:
        provider, fields = self.provider, type(self).model_fields
        # A value equal to the default counts as absent, so that a model_dump() validates again.
        foreign = [
            f"{key} applies to {' and '.join(owners)} only"
            for key, owners in _PROVIDER_OPTIONS.items()
            if provider not in owners and getattr(self, key) != fields[key].default
        ]
        if foreign:
            raise ValueError("; ".join(foreign))
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id needs role_arn")
        if provider == "azure":
            _check_azure_auth(self)
        return self

    @property
    def provider(self) -> Provider:
        """``s3``, ``azure`` or ``gcs``."""
        return _SCHEMES[self.url.partition("://")[0]]

    @property
    def bucket(self) -> str:
        """The bucket (S3, GCS) or container (Azure)."""
        return self.url.partition("://")[2].partition("/")[0]

    @property
    def prefix(self) -> str:
        """Where objects go in the bucket, without outer slashes ("" for the root)."""
        return self.url.partition("://")[2].partition("/")[2]

    @property
    def extension(self) -> str:
        """File name extension of the objects: ``jsonl``, ``json``, ``jsonl.gz``, ``json.gz``."""
        return self.format + (".gz" if self.compression == "gzip" else "")

    @property
    def sse_algorithm(self) -> Literal["aws:kms", "AES256"]:
        """S3 server-side encryption of every object: SSE-KMS with kms_key_id, else SSE-S3."""
        return "aws:kms" if self.kms_key_id is not None else "AES256"

    def uses_plain_http(self) -> bool:
        """True if requests would go over http:// (allowed only with ``allow_http``)."""
        return self._service().startswith("http://")

    def endpoint(self) -> str:
        """Where files go, without secrets: for logs, alerts and errors, e.g.
        ``s3://audit/zaita`` or ``s3://audit/zaita via http://127.0.0.1:8333``."""
        service = self._service()
        return f"{self.url} via {service}" if service else self.url

    def _service(self) -> str:
        """The non-default service address: endpoint_url, or the Azure account's blob URL."""
        if self.endpoint_url is not None:
            return _origin(self.endpoint_url)
        if self.account_url is not None:
            return _origin(self.account_url)
        if self.connection_string is not None:
            parts = _connection_parts(self.connection_string)
            if parts.get("usedevelopmentstorage", "").lower() == "true":
                return _AZURITE_BLOB
            if "blobendpoint" in parts:
                return _origin(parts["blobendpoint"])
            protocol = parts.get("defaultendpointsprotocol", "https")
            suffix = parts.get("endpointsuffix", "core.windows.net")
            return f"{protocol}://{parts.get('accountname', '')}.blob.{suffix}"
        return ""


def _check_bucket(provider: Provider, name: str) -> None:
    """Roughly each provider's naming rules: enough to catch typos and injected text."""
    if provider == "s3":
        ok = bool(_S3_BUCKET.fullmatch(name)) and ".." not in name
        ok = ok and not name.startswith(("xn--", "sthree-"))
        ok = ok and not name.endswith(("-s3alias", "--ol-s3")) and not _IPV4.fullmatch(name)
        rule = "3-63 lower-case letters, digits, '.' or '-', starting and ending alphanumeric"
    elif provider == "azure":
        ok = bool(_AZURE_CONTAINER.fullmatch(name))
        rule = "3-63 lower-case letters, digits or single '-', starting and ending alphanumeric"
    else:
        parts = name.split(".")
        ok = bool(_GCS_BUCKET.fullmatch(name)) and all(0 < len(p) <= 63 for p in parts)
        ok = ok and (len(name) <= 63 or "." in name) and not _IPV4.fullmatch(name)
        ok = ok and not name.startswith("goog") and "google" not in name
        rule = "3-63 lower-case letters, digits, '.', '_' or '-', starting and ending alphanumeric"
    if not ok:
        kind = "container" if provider == "azure" else "bucket"
        raise ValueError(f"{kind} name must have {rule}")


def _check_service_url(value: str) -> None:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an absolute https:// URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or #fragment (put a SAS in sas_token)")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters")


def _check_azure_auth(dest: StorageDestination) -> None:
    if (dest.connection_string is None) == (dest.account_url is None):
        raise ValueError("azure needs exactly one of connection_string and account_url")
    if dest.connection_string is not None and (dest.sas_token or dest.account_key):
        raise ValueError("sas_token and account_key go with account_url, not connection_string")
    if dest.sas_token is not None and dest.account_key is not None:
        raise ValueError("sas_token and account_key exclude each other")


def _connection_parts(value: SecretStr) -> dict[str, str]:
    """``Key=Value;…`` of an Azure connection string, keys lower-cased. Raises ValueError
    without quoting anything: values hold the account key."""
    text = value.get_secret_value()
    if any(not c.isprintable() for c in text):
        raise ValueError("must not contain control characters")
    parts: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in text.split(";"))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("must be Key=Value pairs separated by ';'")
        parts[key.strip().lower()] = val.strip()
    return parts


def _origin(url: str) -> str:
    """scheme://host[:port][/path] of a service URL: no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"
