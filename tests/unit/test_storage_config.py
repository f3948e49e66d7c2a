"""Storage settings and destination validation: durations, urls, provider options, secrets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from connectors.storage.config import (
    GiB,
    MiB,
    StorageDestination,
    StorageSettings,
    parse_duration,
)
from connectors.storage.naming import DEFAULT_TEMPLATE

pytestmark = pytest.mark.unit

ACCOUNT_KEY = "S3CRETazureKEY+/" * 5 + "=="
CONNECTION = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={ACCOUNT_KEY}"
SAS = "sv=2024-08-04&ss=b&sp=cw&sig=S3CRETsasSIGNATURE%3D"


def invalid(fields: dict[str, Any], message: str) -> str:
    """The errors' locations and messages: what the destinations loader reports (pydantic's
    own str() also shows the input, which the loader never uses)."""
    with pytest.raises(ValidationError) as info:
        StorageDestination.model_validate(fields)
    text = "\n".join(f"{e['loc']}: {e['msg']}" for e in info.value.errors())
    assert message in text
    return text


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("1.5h", 5400),
        (" 5m ", 300),
        ("300", 300),
        (300, 300),
        (2.5, 2.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["0", "0s", "0.0m", "-5m", "5M", "5 minutes", "5ms", "", "m", "1e3", "1h30m", "inf", "nan"],
)
def test_bad_duration_strings_name_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [0, -1, -0.5, math.inf, math.nan, True, None, [5]])
def test_bad_duration_values(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


# -- destination: defaults, url ------------------------------------------------------------


def test_defaults() -> None:
    dest = StorageDestination(url="s3://audit-logs/zaita")
    assert (dest.provider, dest.bucket, dest.prefix) == ("s3", "audit-logs", "zaita")
    assert (dest.format, dest.compression, dest.interval) == ("jsonl", "gzip", 300.0)
    assert (dest.max_events, dest.max_bytes) == (100_000, 64 * MiB)
    assert dest.path_template == DEFAULT_TEMPLATE
    assert (dest.path_style, dest.sse_algorithm, dest.extension) == (False, "AES256", "jsonl.gz")
    assert dest.endpoint() == "s3://audit-logs/zaita"
    assert not dest.uses_plain_http()
    plain = StorageDestination(url="gs://audit-logs", format="json", compression="none")
    assert plain.extension == "json"


@pytest.mark.parametrize(
    ("url", "provider", "bucket", "prefix"),
    [
        ("s3://audit-logs", "s3", "audit-logs", ""),
        ("s3://audit-logs/", "s3", "audit-logs", ""),
        ("s3://audit.logs-1//a/b=c/", "s3", "audit.logs-1", "a/b=c"),
        ("azure://logs/zaita/audit", "azure", "logs", "zaita/audit"),
        ("gs://audit_logs.example.com/p", "gcs", "audit_logs.example.com", "p"),
    ],
)
def test_urls_are_normalized(url: str, provider: str, bucket: str, prefix: str) -> None:
    azure = {"connection_string": CONNECTION} if provider == "azure" else {}
    dest = StorageDestination.model_validate({"url": url, **azure})
    assert (dest.provider, dest.bucket, dest.prefix) == (provider, bucket, prefix)
    scheme = url.partition("://")[0]
    assert dest.url == f"{scheme}://{bucket}" + (f"/{prefix}" if prefix else "")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://audit-logs/x", "must be s3://"),
        ("S3://audit-logs", "must be s3://"),
        ("s3:/audit-logs", "must be s3://"),
        ("s3://", "bucket name"),
        ("s3://ab", "bucket name"),
        ("s3://Audit-Logs", "bucket name"),
        ("s3://audit..logs", "bucket name"),
        ("s3://-audit", "bucket name"),
        ("s3://192.168.10.1", "bucket name"),
        ("s3://xn--audit", "bucket name"),
        ("s3://user@audit-logs/x", "bucket name"),
        ("s3://audit-logs:9000/x", "bucket name"),
        ("azure://ab-/x", "container name"),
        ("azure://a--b/x", "container name"),
        ("azure://log_s", "container name"),
        ("gs://goog-audit", "bucket name"),
        ("gs://my-google-logs", "bucket name"),
        ("gs://_audit", "bucket name"),
        ("s3://audit-logs/a//b", "empty segment"),
        ("s3://audit-logs/a/./b", "segment 2 is '.'"),
        ("s3://audit-logs/../b", "segment 1 is '..'"),
        ("s3://audit-logs/a/..", "segment 2 is '..'"),
        ("s3://audit-logs/a\x00b", "may contain only"),
        ("s3://audit-logs/a\nb", "may contain only"),
        ("s3://audit-logs/a b", "may contain only"),
        ("s3://audit-logs/caf\u00e9", "may contain only"),
        ("s3://audit-logs/a\\b", "may contain only"),
        ("s3://audit-logs/a?x=1", "may contain only"),
        ("s3://audit-logs/a#x", "may contain only"),
        ("s3://audit-logs/a%2F..", "may contain only"),
        ("s3://audit-logs/" + "a" * 513, "longer than 512"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    invalid({"url": url}, message)


# -- provider options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key", "value", "owner"),
    [
        ("azure://logs", "kms_key_id", "alias/k", "s3"),
        ("azure://logs", "endpoint_url", "https://s3.example.com", "s3 and gcs"),
        ("gs://audit-logs", "path_style", True, "s3"),
        ("gs://audit-logs", "role_arn", "arn:aws:iam::123456789012:role/w", "s3"),
        ("s3://audit-logs", "connection_string", CONNECTION, "azure"),
        ("s3://audit-logs", "encryption_scope", "cmk-scope", "azure"),
        (
            "s3://audit-logs",
            "kms_key_name",
            "projects/p/locations/l/keyRings/r/cryptoKeys/k",
            "gcs",
        ),
        ("azure://logs", "credentials_file", "/k.json", "gcs"),
    ],
)
def test_options_of_another_provider_are_named(url: str, key: str, value: Any, owner: str) -> None:
    fields = {"url": url, key: value}
    if url.startswith("azure") and key != "connection_string":
        fields["connection_string"] = CONNECTION
    text = invalid(fields, f"{key} applies to {owner} only")
    assert ACCOUNT_KEY not in text


def test_s3_options() -> None:
    dest = StorageDestination(
        url="s3://audit-logs/zaita",
        endpoint_url="http://127.0.0.1:8333/",
        region="us-east-1",
        kms_key_id="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        role_arn="arn:aws:iam::123456789012:role/zaita/AuditWriter",
        external_id="zaita-tnt_7g8h9i0j",
    )
    assert dest.path_style, "a custom endpoint defaults to path-style requests"
    assert dest.sse_algorithm == "aws:kms"
    assert dest.uses_plain_http()
    assert dest.endpoint() == "s3://audit-logs/zaita via http://127.0.0.1:8333"
    assert not StorageDestination(
        url="s3://audit-logs", endpoint_url="https://s3.example.com", path_style=False
    ).path_style
    assert not StorageDestination(url="s3://audit-logs", region="eu-west-1").path_style
    assert StorageDestination(url="s3://audit-logs", kms_key_id="alias/audit").kms_key_id


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"external_id": "abc"}, "external_id needs role_arn"),
        ({"role_arn": "arn:aws:iam::123:role/x"}, "role_arn"),
        ({"role_arn": "arn:aws:iam::123456789012:user/x"}, "role_arn"),
        ({"role_arn": "arn:aws:iam::123456789012:role/x", "external_id": "a b"}, "external_id"),
        ({"kms_key_id": "alias/has space"}, "kms_key_id"),
        ({"kms_key_id": ""}, "kms_key_id"),
        ({"region": "EU West"}, "region"),
        ({"endpoint_url": "ftp://s3.example.com"}, "absolute https"),
        ({"endpoint_url": "https://u:S3CRETpw@s3.example.com"}, "must not carry credentials"),
        ({"endpoint_url": "https://s3.example.com/?X-Amz-Signature=1"}, "query string"),
        ({"endpoint_url": "https://s3.example.com:99999"}, "invalid port"),
        ({"interval": "0.5s"}, "interval"),
        ({"interval": "2d"}, "interval"),
        ({"max_events": 0}, "max_events"),
        ({"max_bytes": 100}, "max_bytes"),
        ({"max_bytes": 2 * GiB}, "max_bytes"),
        ({"format": "csv"}, "format"),
        ({"compression": "zstd"}, "compression"),
        ({"path_template": "{prefix}/{tenant}.{ext}"}, "path_template"),
        ({"bucket": "x"}, "Extra inputs"),
    ],
)
def test_destination_errors(fields: dict[str, Any], message: str) -> None:
    text = invalid({"url": "s3://audit-logs", **fields}, message)
    assert "S3CRET" not in text


def test_interval_takes_durations() -> None:
    for given, seconds in (("1d", 86400.0), (" 30s", 30.0), (90, 90.0), ("1", 1.0)):
        dest = StorageDestination.model_validate({"url": "gs://audit-logs", "interval": given})
        assert dest.interval == seconds


# -- Azure credentials ---------------------------------------------------------------------

ACCOUNT_URL = "https://acct.blob.core.windows.net"


@pytest.mark.parametrize(
    ("fields", "service"),
    [
        ({"connection_string": CONNECTION}, "https://acct.blob.core.windows.net"),
        ({"connection_string": "UseDevelopmentStorage=true"}, "http://127.0.0.1:10000/dev"),
        (
            {
                "connection_string": f"BlobEndpoint=http://127.0.0.1:10000/acct/;AccountKey={ACCOUNT_KEY}"
            },
            "http://127.0.0.1:10000/acct",
        ),
        ({"account_url": ACCOUNT_URL + "/"}, ACCOUNT_URL),
        ({"account_url": ACCOUNT_URL, "sas_token": "?" + SAS}, ACCOUNT_URL),
        ({"account_url": ACCOUNT_URL, "account_key": ACCOUNT_KEY}, ACCOUNT_URL),
    ],
)
def test_azure_credentials(fields: dict[str, Any], service: str) -> None:
    dest = StorageDestination.model_validate(
        {"url": "azure://logs/zaita", "encryption_scope": "cmk-scope", **fields}
    )
    assert dest.endpoint().startswith(f"azure://logs/zaita via {service}")
    assert dest.uses_plain_http() == service.startswith("http://")
    for text in (dest.endpoint(), repr(dest), str(dest)):
        assert "S3CRET" not in text
    if dest.sas_token is not None:
        assert dest.sas_token.get_secret_value() == SAS  # the leading "?" is dropped


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of connection_string and account_url"),
        ({"connection_string": CONNECTION, "account_url": ACCOUNT_URL}, "exactly one of"),
        ({"connection_string": CONNECTION, "sas_token": SAS}, "go with account_url"),
        (
            {"account_url": ACCOUNT_URL, "sas_token": SAS, "account_key": ACCOUNT_KEY},
            "exclude each other",
        ),
        ({"connection_string": f"AccountKey={ACCOUNT_KEY}"}, "AccountName or BlobEndpoint"),
        ({"connection_string": f"S3CRET;AccountName=a;AccountKey={ACCOUNT_KEY}"}, "Key=Value"),
        ({"connection_string": f"BlobEndpoint=ftp://h;AccountKey={ACCOUNT_KEY}"}, "BlobEndpoint"),
        ({"account_url": ACCOUNT_URL + "/?" + SAS}, "put a SAS in sas_token"),
        ({"account_url": ACCOUNT_URL, "sas_token": "sv=2024&S3CRET=1"}, "sig="),
        ({"account_url": ACCOUNT_URL, "sas_token": "sig=S3CRET x"}, "without spaces"),
        ({"account_url": ACCOUNT_URL, "account_key": "S3CRET not base64"}, "base64"),
        ({"account_url": ACCOUNT_URL, "encryption_scope": "a"}, "encryption_scope"),
    ],
)
def test_azure_errors_never_show_secrets(fields: dict[str, Any], message: str) -> None:
    text = invalid({"url": "azure://logs", **fields}, message)
    assert "S3CRET" not in text


def test_gcs_options() -> None:
    key = "projects/p-1/locations/europe-west1/keyRings/audit/cryptoKeys/files"
    dest = StorageDestination(
        url="gs://audit-logs/z", kms_key_name=key, credentials_file=Path("/var/run/gcs.json")
    )
    assert dest.kms_key_name == key and dest.endpoint() == "gs://audit-logs/z"
    invalid({"url": "gs://audit-logs", "kms_key_name": "projects/p/keyRings/r"}, "kms_key_name")


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "s3://audit-logs/z", "endpoint_url": "http://127.0.0.1:8333", "interval": "1h"},
        {"url": "azure://logs", "account_url": ACCOUNT_URL, "account_key": ACCOUNT_KEY},
        {"url": "gs://audit-logs", "format": "json", "compression": "none", "max_events": 5},
    ],
)
def test_a_dump_validates_again(fields: dict[str, Any]) -> None:
    dest = StorageDestination.model_validate(fields)
    assert StorageDestination.model_validate(dest.model_dump()) == dest


def test_destinations_are_frozen() -> None:
    dest = StorageDestination(url="s3://audit-logs")
    with pytest.raises(ValidationError, match="frozen"):
        dest.url = "s3://other-bucket"


# -- process settings ----------------------------------------------------------------------


def test_settings_defaults_and_bounds(tmp_path: Path) -> None:
    settings = StorageSettings()
    assert settings.spill_threshold_bytes == 8 * MiB and settings.spill_dir is None
    assert (settings.multipart_threshold_bytes, settings.part_size_bytes) == (16 * MiB, 8 * MiB)
    assert settings.compression_level == 6 and not settings.allow_http
    assert settings.health.failing_after_failures >= 1
    assert (settings.max_concurrent_uploads, settings.drain_concurrent_uploads) == (16, 64)
    assert settings.waiting_memory_bytes == 32 * MiB and settings.open_memory_bytes == 256 * MiB
    assert (settings.max_waiting_files, settings.max_waiting_events) == (1000, 2_000_000)
    assert StorageSettings(spill_dir=tmp_path, spill_threshold_bytes=0).spill_dir == tmp_path
    assert StorageSettings(waiting_memory_bytes=0).waiting_memory_bytes == 0
    assert StorageSettings(open_memory_bytes=0).open_memory_bytes == 0
    with pytest.raises(ValidationError, match="open_memory_bytes"):
        StorageSettings(open_memory_bytes=-1)
    with pytest.raises(ValidationError, match="max_waiting_files"):
        StorageSettings(max_waiting_files=0)
    with pytest.raises(ValidationError, match="part_size_bytes"):
        StorageSettings(part_size_bytes=4 * MiB)
    with pytest.raises(ValidationError, match="spill_dir"):
        StorageSettings(spill_dir=tmp_path / "missing")
    with pytest.raises(ValidationError, match="compression_level"):
        StorageSettings(compression_level=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        StorageSettings.model_validate({"spill_treshold_bytes": 1})
    with pytest.raises(ValidationError, match="health"):
        StorageSettings.model_validate({"health": {"disabled_after_seconds": 1}})


def test_secret_fields_are_secret_str() -> None:
    dest = StorageDestination(url="azure://logs", connection_string=SecretStr(CONNECTION))
    assert isinstance(dest.connection_string, SecretStr)
    assert ACCOUNT_KEY not in dest.model_dump_json()
