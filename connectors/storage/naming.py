"""Object keys of the storage connector: what a finished file is called in the bucket.

The sink calls :func:`object_key` once per file, just before uploading it; the destination's
configuration calls :func:`check_template` and :func:`normalize_prefix` when the destinations
file is loaded, so a wrong template or prefix is reported then, not at the first upload.

The default template is Hive style, which Athena, Glue, Spark, Splunk and Sentinel ingestion
rules understand without extra configuration::

    {prefix}/tenant_id={tenant}/date={date}/hour={hour}/{tenant}-{partition}-{first_offset}.{ext}

Placeholders: ``prefix`` (the url's prefix, must open the template), ``tenant`` (escaped, see
below), ``date`` (``YYYY-MM-DD``), ``year``, ``month``, ``day``, ``hour`` (two digits) of the
file's FIRST event in UTC, ``partition`` and ``first_offset`` (decimal, Kafka partition and
offset of that first event) and ``ext`` (``jsonl``, ``json``, plus ``.gz``).

Determinism: the key depends only on the destination and on (tenant, first event's timestamp,
partition, first offset). A file that is rebuilt after a crash from the same first offset gets
the same key, so its upload replaces the earlier object instead of adding a second copy. A
partition's offsets belong to one record each, and each record to one tenant, so
(partition, first offset) already tells files apart; :func:`check_template` only has to make
sure those two numbers can be read back from the key.

What a key cannot prevent: a rebuilt file that starts at the same offset but ends elsewhere.
``max_events`` and ``max_bytes`` close it at the same event again; the interval, being wall
clock time, usually does not, so a replay that packs more events into the file overwrites the
first object and repeats what later objects from before the crash already hold. Changing the
template, prefix, format or compression between the two runs also gives new keys. Keeping that
window small (committing soon after each upload) is the sink's business.

Containment: every key starts with ``<prefix>/`` (or is relative to the bucket's root when the
prefix is empty), has no empty, ``.`` or ``..`` segment, and contains only ``A-Z a-z 0-9 . _ - =
%`` and ``/``. Tenant ids are escaped with :func:`escape_value`: bytes outside ``A-Z a-z 0-9 _ .
-`` become ``%XX`` (upper-case hex of the UTF-8 bytes), and so does a leading ``.`` or ``_``
(Spark and Hive skip such names as hidden). The escape is reversible (``urllib.parse.unquote``),
hence injective: two tenant ids never share a key. Ids of the platform's alphabet
(``[A-Za-z0-9][A-Za-z0-9_.:-]*``) stay readable; only ``:`` turns into ``%3A``, which is also
how Hive escapes it in partition values, so query engines read the original id back.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.storage.config import StorageDestination

DEFAULT_TEMPLATE = (
    "{prefix}/tenant_id={tenant}/date={date}/hour={hour}/{tenant}-{partition}-{first_offset}.{ext}"
)
PLACEHOLDERS = frozenset(
    {"prefix", "tenant", "date", "year", "month", "day", "hour", "partition", "first_offset", "ext"}
)
MAX_KEY_BYTES = 1024
"""S3, Azure Blob and GCS all cap object names at 1,024 bytes."""
MAX_PREFIX_CHARS = 512
MAX_TEMPLATE_CHARS = 256

_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._=-]+")
_TEMPLATE_TEXT = re.compile(r"[A-Za-z0-9._=/-]*")
_EXTENSION = re.compile(r"[a-z0-9]{1,8}(?:\.[a-z0-9]{1,8}){0,2}")
_UNESCAPED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_HIDDEN_START = frozenset(b"._")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_WHEN_MS = 253402300800000  # 10000-01-01T00:00:00Z: four-digit years only
_PREFIX_HEAD = "{prefix}/"

# A template cut into (literal text, placeholder or None) pairs, as string.Formatter reads it.
_Parsed = tuple[tuple[str, str | None], ...]


def escape_value(value: str) -> str:
    """``value`` made safe for one key segment (see the module docstring): reversible."""
    raw = value.encode("utf-8", "surrogatepass")
    out: list[str] = []
    for index, byte in enumerate(raw):
        keep = byte in _UNESCAPED and not (index == 0 and byte in _HIDDEN_START)
        out.append(chr(byte) if keep else f"%{byte:02X}")
    return "".join(out)


def normalize_prefix(text: str) -> str:
    """The url's prefix without outer slashes; ValueError if a segment is unsafe.

    Segments (between slashes) must be non-empty, not ``.`` or ``..``, and made of letters,
    digits and ``. _ = -``: characters that every store, SDK and downstream tool keeps as they
    are. Messages name the problem, not the value.
    """
    prefix = text.strip("/")
    if not prefix:
        return ""
    if len(prefix) > MAX_PREFIX_CHARS:
        raise ValueError(f"the prefix is longer than {MAX_PREFIX_CHARS} characters")
    for number, segment in enumerate(prefix.split("/"), start=1):
        if not segment:
            raise ValueError("the prefix has an empty segment ('//')")
        if segment in (".", ".."):
            raise ValueError(f"prefix segment {number} is '{segment}'")
        if not _SEGMENT_CHARS.fullmatch(segment):
            raise ValueError(
                f"prefix segment {number} may contain only letters, digits and . _ = -"
            )
    return prefix


def check_template(template: str) -> str:
    """``template`` if it is a valid path template, else ValueError saying what is wrong."""
    _parse(template)
    return template


@lru_cache(maxsize=64)
def _parse(template: str) -> _Parsed:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"is longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"unbalanced braces ({exc})") from None
    parsed: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if not _TEMPLATE_TEXT.fullmatch(literal):
            raise ValueError(
                "text outside placeholders may contain only letters, digits, . _ = - /"
            )
        if name is not None and name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{name}}} (known: {known})")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format or conversion")
        parsed.append((literal, name))
    names = [name for _, name in parsed]
    if not template.startswith(_PREFIX_HEAD) or names.count("prefix") != 1:
        raise ValueError("must start with '{prefix}/' (and name {prefix} only there)")
    for needed in ("partition", "first_offset"):
        if needed not in names:
            raise ValueError(f"must contain {{{needed}}} so that every file gets its own key")
    # {partition} and {first_offset} are digits: a digit or another placeholder right next to
    # them would make keys ambiguous ("{partition}{first_offset}": 1 and 23 read as 12 and 3).
    for index, (literal, name) in enumerate(parsed):
        if name not in ("partition", "first_offset"):
            continue
        after = parsed[index + 1][0] if index + 1 < len(parsed) else "/"  # the end bounds too
        if not literal or not after or literal[-1].isdigit() or after[0].isdigit():
            raise ValueError(f"{{{name}}} must have a non-digit character on both sides")
    for number, segment in enumerate(template[len(_PREFIX_HEAD) :].split("/"), start=1):
        if segment in ("", ".", ".."):
            raise ValueError(f"segment {number} after {{prefix}}/ is empty, '.' or '..'")
    return tuple(parsed)


def object_key(
    dest: StorageDestination,
    tenant_id: str,
    when_ms: int,
    partition: int,
    first_offset: int,
    extension: str,
) -> str:
    """The key of a file of ``tenant_id`` whose first event is (``partition``,
    ``first_offset``) with timestamp ``when_ms`` (ms since the epoch, UTC), e.g.
    ``audit/tenant_id=tnt_a/date=2026-03-15/hour=08/tnt_a-3-1200.jsonl.gz``.

    ``extension`` is the file's (``dest.extension``). Raises ValueError for an empty tenant
    id, negative numbers, a timestamp outside years 1970-9999 or a key over 1,024 bytes (an
    absurdly long tenant id); every check is repeated here, so a destination built without
    validation cannot produce an unsafe key either.
    """
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ValueError("tenant id must be a non-empty string")
    for label, number in (("partition", partition), ("first_offset", first_offset)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"{label} must be a non-negative integer, not {number!r}")
    if isinstance(when_ms, bool) or not isinstance(when_ms, int):
        raise ValueError(f"timestamp must be integer milliseconds, not {when_ms!r}")
    if not 0 <= when_ms < _MAX_WHEN_MS:
        raise ValueError(f"timestamp {when_ms} ms is outside years 1970-9999")
    if not _EXTENSION.fullmatch(extension):
        raise ValueError(f"extension {extension!r} is not like 'jsonl' or 'json.gz'")
    when = _EPOCH + timedelta(milliseconds=when_ms)
    values = {
        "tenant": escape_value(tenant_id),
        "date": f"{when:%Y-%m-%d}",
        "year": f"{when:%Y}",
        "month": f"{when:%m}",
        "day": f"{when:%d}",
        "hour": f"{when:%H}",
        "partition": str(partition),
        "first_offset": str(first_offset),
        "ext": extension,
    }
    parsed = _parse(dest.path_template)
    prefix = normalize_prefix(dest.prefix)
    # The first piece is ("", "prefix") and the rest renders to "/…": the prefix goes in front
    # of that slash, or the slash goes too when objects go to the bucket's root.
    relative = _render(parsed[1:], values)[1:]
    key = f"{prefix}/{relative}" if prefix else relative
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ValueError("the key would have an empty, '.' or '..' segment")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"the key would be longer than {MAX_KEY_BYTES} bytes")
    return key


def _render(parsed: _Parsed, values: dict[str, str]) -> str:
    return "".join(literal + (values[name] if name else "") for literal, name in parsed)
