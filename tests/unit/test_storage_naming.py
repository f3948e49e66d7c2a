"""Object keys: the default Hive-style layout, determinism, template checks, and hostile input
that must never leave the prefix or add path segments (property style, seeded)."""

from __future__ import annotations

import random
import re
from urllib.parse import unquote

import pytest

from connectors.storage.config import StorageDestination
from connectors.storage.naming import (
    DEFAULT_TEMPLATE,
    check_template,
    escape_value,
    normalize_prefix,
    object_key,
)

pytestmark = pytest.mark.unit

WHEN = 1773564137003  # 2026-03-15T08:42:17.003Z
KEY_CHARS = re.compile(r"[A-Za-z0-9._=%/-]+")
PLATFORM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
HOSTILE_PIECES = [
    "/", "//", "..", ".", "\\", "\x00", "\n", "\r", "\t", "\x7f", " ", "%", "%2F", "%2e%2e",
    "=", "{", "}", "?", "#", "&", "*", ":", "~", "\u00e9", "\u202e", "\U0001f600", "\ud800",
    "a", "Z", "0", "_", "-", "tnt", "tenant_id=x",
]  # fmt: skip


def dest(url: str = "s3://audit-logs/zaita/audit", **fields: object) -> StorageDestination:
    return StorageDestination.model_validate({"url": url, **fields})


def test_default_layout() -> None:
    key = object_key(dest(), "tnt_7g8h9i0j", WHEN, 3, 1200, "jsonl.gz")
    assert key == (
        "zaita/audit/tenant_id=tnt_7g8h9i0j/date=2026-03-15/hour=08/tnt_7g8h9i0j-3-1200.jsonl.gz"
    )
    root = object_key(dest("gs://audit-logs"), "t", 0, 0, 0, "json")
    assert root == "tenant_id=t/date=1970-01-01/hour=00/t-0-0.json"


def test_keys_are_deterministic_and_follow_the_first_event() -> None:
    d = dest()
    first = object_key(d, "tnt_a", WHEN, 7, 42, "jsonl")
    assert first == object_key(dest(), "tnt_a", WHEN, 7, 42, "jsonl"), "a replay gets the same"
    assert first != object_key(d, "tnt_a", WHEN, 7, 43, "jsonl")
    assert first != object_key(d, "tnt_a", WHEN, 8, 42, "jsonl")
    # The date and hour are the first event's, in UTC: one millisecond before 09:00 is 08.
    assert "/hour=08/" in object_key(d, "t", 1773565199999, 0, 1, "jsonl")
    assert "/hour=09/" in object_key(d, "t", 1773565200000, 0, 1, "jsonl")
    assert "/date=2026-03-16/hour=00/" in object_key(d, "t", 1773619200000, 0, 1, "jsonl")


def test_custom_templates() -> None:
    d = dest(
        path_template="{prefix}/{year}/{month}/{day}/{hour}/p{partition}_o{first_offset}.{ext}"
    )
    assert object_key(d, "t", WHEN, 1, 2, "json.gz") == "zaita/audit/2026/03/15/08/p1_o2.json.gz"
    flat = dest("s3://audit-logs", path_template="{prefix}/{partition}-{first_offset}")
    assert object_key(flat, "t", WHEN, 1, 2, "json") == "1-2"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("tenant_id={tenant}/{partition}-{first_offset}.{ext}", "must start with '{prefix}/'"),
        ("/{prefix}/{partition}-{first_offset}", "must start with '{prefix}/'"),
        ("{prefix}{partition}-{first_offset}", "must start with '{prefix}/'"),
        ("{prefix}/{prefix}/{partition}-{first_offset}", "must start with '{prefix}/'"),
        ("{prefix}/{tenant}-{first_offset}.{ext}", "must contain {partition}"),
        ("{prefix}/{tenant}-{partition}.{ext}", "must contain {first_offset}"),
        ("{prefix}/{partition}{first_offset}.{ext}", "non-digit character on both sides"),
        ("{prefix}/x{partition}-{first_offset}{tenant}", "non-digit character on both sides"),
        ("{prefix}/1{partition}-{first_offset}", "non-digit character on both sides"),
        ("{prefix}/{partition}-{first_offset}7", "non-digit character on both sides"),
        ("{prefix}/{partition}-{first_offset}/{bucket}", "unknown placeholder {bucket}"),
        ("{prefix}/{partition}-{first_offset:08d}", "takes no format or conversion"),
        ("{prefix}/{partition}-{first_offset!r}", "takes no format or conversion"),
        ("{prefix}/{partition}-{}", "unknown placeholder {}"),
        ("{prefix}/{partition}-{first_offset", "unbalanced braces"),
        ("{prefix}/{partition}}-{first_offset}", "unbalanced braces"),
        ("{prefix}/../{partition}-{first_offset}", "is empty, '.' or '..'"),
        ("{prefix}/./{partition}-{first_offset}", "is empty, '.' or '..'"),
        ("{prefix}//{partition}-{first_offset}", "is empty, '.' or '..'"),
        ("{prefix}/{partition}-{first_offset}/", "is empty, '.' or '..'"),
        ("{prefix}/a b/{partition}-{first_offset}", "may contain only"),
        ("{prefix}/a\\b/{partition}-{first_offset}", "may contain only"),
        ("{prefix}/{{x}}/{partition}-{first_offset}", "may contain only"),
        ("{prefix}/" + "x" * 250 + "{partition}-{first_offset}", "longer than 256"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_template(template)
    with pytest.raises(ValueError, match="path_template"):
        dest(path_template=template)


def test_the_default_template_is_valid() -> None:
    assert check_template(DEFAULT_TEMPLATE) == DEFAULT_TEMPLATE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", WHEN, 0, 0, "jsonl"), "tenant id"),
        (("t", WHEN, -1, 0, "jsonl"), "partition"),
        (("t", WHEN, 0, -5, "jsonl"), "first_offset"),
        (("t", WHEN, True, 0, "jsonl"), "partition"),
        (("t", -1, 0, 0, "jsonl"), "outside years"),
        (("t", 253402300800000, 0, 0, "jsonl"), "outside years"),
        (("t", 1.5, 0, 0, "jsonl"), "integer milliseconds"),
        (("t", WHEN, 0, 0, "../x"), "extension"),
        (("t", WHEN, 0, 0, ""), "extension"),
        (("t", WHEN, 0, 0, "jsonl/gz"), "extension"),
        (("x" * 500, WHEN, 0, 0, "jsonl"), "longer than 1024"),
    ],
)
def test_object_key_rejects_bad_values(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        object_key(dest(), *args)  # type: ignore[arg-type]


def test_object_key_checks_destinations_built_without_validation() -> None:
    unchecked = StorageDestination.model_construct(
        url="s3://audit-logs/../../etc", path_template=DEFAULT_TEMPLATE
    )
    with pytest.raises(ValueError, match="'..'"):
        object_key(unchecked, "t", WHEN, 0, 0, "jsonl")
    sneaky = StorageDestination.model_construct(
        url="s3://audit-logs/z", path_template="{prefix}/../{partition}-{first_offset}"
    )
    with pytest.raises(ValueError, match="'..'"):
        object_key(sneaky, "t", WHEN, 0, 0, "jsonl")


# -- tenant ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "escaped"),
    [
        ("tnt_7g8h9i0j", "tnt_7g8h9i0j"),
        ("Org-1.prod", "Org-1.prod"),
        ("org:prod", "org%3Aprod"),
        ("..", "%2E."),
        (".", "%2E"),
        ("_hidden", "%5Fhidden"),
        ("a/b", "a%2Fb"),
        ("a%2Fb", "a%252Fb"),
        ("caf\u00e9", "caf%C3%A9"),
        ("a b\n", "a%20b%0A"),
    ],
)
def test_escape_value(tenant: str, escaped: str) -> None:
    assert escape_value(tenant) == escaped
    assert unquote(escaped) == tenant


def hostile_ids(rng: random.Random, count: int) -> list[str]:
    ids = {
        "".join(rng.choice(HOSTILE_PIECES) for _ in range(rng.randint(1, 8))) for _ in range(count)
    }
    return sorted(ids | {"..", ".", "/", "../..", "%2F", "a/../../b", "tenant_id=x/date=1"})


@pytest.mark.parametrize(
    "template", [DEFAULT_TEMPLATE, "{prefix}/{tenant}/{tenant}-{partition}-{first_offset}.{ext}"]
)
@pytest.mark.parametrize(
    "url", ["s3://audit-logs/zaita/audit", "azure://logs", "gs://audit_logs/a=b/.c"]
)
def test_hostile_tenant_ids_never_escape_the_prefix(template: str, url: str) -> None:
    d = dest(
        url,
        path_template=template,
        **({"account_url": "https://a.blob.core.windows.net"} if url.startswith("azure") else {}),
    )
    expected_segments = len(template.split("/")) - 1 + (len(d.prefix.split("/")) if d.prefix else 0)
    rng = random.Random(20260315)
    keys: dict[str, str] = {}
    for tenant in hostile_ids(rng, 3000):
        key = object_key(d, tenant, WHEN, 3, 1200, "jsonl.gz")
        assert KEY_CHARS.fullmatch(key), key
        segments = key.split("/")
        assert len(segments) == expected_segments, key
        assert all(s not in ("", ".", "..") for s in segments)
        assert not segments[-1].startswith(("_", ".")), "Spark and Hive would skip the file"
        if d.prefix:
            assert key.startswith(d.prefix + "/")
        if template == DEFAULT_TEMPLATE:
            partition_dir = segments[-4]
            assert unquote(partition_dir.removeprefix("tenant_id="), errors="surrogatepass") == (
                tenant
            )
        assert key not in keys, f"{tenant!r} and {keys.get(key)!r} share a key"
        keys[key] = tenant


def test_platform_ids_map_one_to_one_and_read_back() -> None:
    rng = random.Random(7)
    alphabet = "abcXYZ019_.:-"
    ids = {
        rng.choice("aZ9") + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        for _ in range(20000)
    }
    escaped = {escape_value(i): i for i in ids}
    assert len(escaped) == len(ids)
    for value, tenant in escaped.items():
        assert PLATFORM_ID.fullmatch(tenant)
        assert re.fullmatch(r"[A-Za-z0-9_.%-]+", value) and unquote(value) == tenant


# -- prefixes ------------------------------------------------------------------------------


def test_normalize_prefix() -> None:
    assert normalize_prefix("") == "" and normalize_prefix("///") == ""
    assert normalize_prefix("/a/b=c/d-e_f.g/") == "a/b=c/d-e_f.g"


def test_hostile_prefixes_are_refused_or_safe() -> None:
    rng = random.Random(99)
    accepted = 0
    for _ in range(5000):
        text = "".join(rng.choice(HOSTILE_PIECES) for _ in range(rng.randint(0, 6)))
        try:
            prefix = normalize_prefix(text)
        except ValueError:
            continue
        accepted += 1
        if prefix:
            assert re.fullmatch(r"[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*", prefix), prefix
            assert all(s not in (".", "..") for s in prefix.split("/"))
    assert accepted > 50  # the generator also produces harmless prefixes
