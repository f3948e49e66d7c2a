"""The destinations file: where each tenant's audit events go, loaded and live-reloaded.

Every ``siem-export run <method>`` loads the file named by ``--destinations`` or
``SIEM_EXPORT_DESTINATIONS_FILE`` with :func:`load_destinations` at start (a wrong file is a
``SettingsError``: exit code 2) and keeps a :class:`DestinationsWatcher` running. The webhook
sink asks :meth:`Destinations.webhook_for` per batch, so an edit applies from the next batch;
the watcher's ``on_change(old, new)`` lets connectors reset the endpoint health of tenants whose
configuration changed.

Format (YAML)::

    tenants:
      tnt_7g8h9i0j:
        webhook: {url: "https://siem.example.com/in", signing_secret: "whsec_…"}
        syslog:  {host: "siem.example.com", port: 6514, transport: tls}
        storage: {url: "s3://bucket/prefix", format: jsonl}
      "*":
        webhook: {url: "https://…"}

Tenant ids match ``[A-Za-z0-9][A-Za-z0-9_.:-]*`` (128 characters at most); ``"*"`` is the
default of every tenant not listed. A listed tenant uses only its own entry: a kind missing
from it is *not* taken from ``"*"``, so a tenant can opt out while ``"*"`` covers the rest. An
empty file, or an empty ``tenants:``, means no destinations.

Reload: the watcher hashes the file every ``interval`` seconds; a valid new version replaces the
old one at once, an invalid or unreadable one is logged once and the old one stays. Problems
name the key path and why, never a value: values hold secrets (headers, signing secrets, Azure
storage keys).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from connectors.errors import SettingsError
from connectors.storage.config import StorageDestination
from connectors.syslog.config import SyslogDestination
from connectors.webhook.config import WebhookDestination

DEFAULT_TENANT = "*"
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Pydantic names union members in error locations ("list[function-after[…]]"); not file keys.
_UNION_TAG = re.compile(r"[a-z-]+\[.*\]")
# Defence in depth: string values at least this long are blanked should one reach a problem.
# Shorter ones would hit the wording of messages ("Input should be 'generic' or 'splunk_hec'").
_MIN_REDACTED = 12
_SPECIAL_KEYS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
_EMPTY_FINGERPRINT = hashlib.sha256(b"").hexdigest()
_log = logging.getLogger(__name__)


class DestinationsError(SettingsError):
    """The destinations file is unreadable or wrong; ``problems`` name each key path and why."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        super().__init__(problems, source)
        head = f"invalid destinations file {source}" if source else "invalid destinations"
        self.args = (head + ":\n" + "\n".join(f"  - {p}" for p in self.problems),)


class TenantDestinations(BaseModel):
    """One tenant's entry: at most one destination per delivery method."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook: WebhookDestination | None = None
    syslog: SyslogDestination | None = None
    storage: StorageDestination | None = None


@dataclass(frozen=True)
class Destinations:
    """A loaded file: listed tenants (without ``"*"``), the ``"*"`` default, the bytes' sha256."""

    source: Path | None
    tenants: Mapping[str, TenantDestinations]
    default: TenantDestinations | None
    fingerprint: str = _EMPTY_FINGERPRINT

    @classmethod
    def empty(cls, source: Path | None = None) -> Destinations:
        """No destinations at all: what an empty file loads as (same fingerprint)."""
        return cls(source, MappingProxyType({}), None)

    def for_tenant(self, tenant_id: str) -> TenantDestinations | None:
        """The tenant's own entry if listed, else the ``"*"`` entry, else None."""
        return self.tenants.get(tenant_id, self.default)

    def webhook_for(self, tenant_id: str) -> WebhookDestination | None:
        """The webhook of :meth:`for_tenant`. A listed tenant without ``webhook`` gets None,
        not the ``"*"`` webhook: that is how a tenant opts out of what ``"*"`` gives the rest."""
        entry = self.for_tenant(tenant_id)
        return entry.webhook if entry is not None else None

    def syslog_for(self, tenant_id: str) -> SyslogDestination | None:
        """The syslog collector of :meth:`for_tenant` (same opt-out rule as ``webhook_for``)."""
        entry = self.for_tenant(tenant_id)
        return entry.syslog if entry is not None else None

    def storage_for(self, tenant_id: str) -> StorageDestination | None:
        """The bucket of :meth:`for_tenant` (same opt-out rule as ``webhook_for``)."""
        entry = self.for_tenant(tenant_id)
        return entry.storage if entry is not None else None


def load_destinations(path: Path) -> Destinations:
    """Read, parse and validate the file; raise DestinationsError listing every problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DestinationsError([f"cannot read the file: {reason}"], str(path)) from exc
    return _parse(data, path)


class DestinationsWatcher:
    """Replaces the configuration when the file's content changes, and reports the swap.

    ``current`` is what the process started with (:func:`load_destinations`); without it the
    first :meth:`check` loads the file. ``on_change(old, new)`` runs after the swap on the
    caller's thread (the event loop's under :meth:`run`), so it may touch asyncio state. Any
    edit calls it, comments too: compare a tenant's entries before resetting its health.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[Destinations, Destinations], None],
        *,
        interval: float = 10.0,
        current: Destinations | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._path, self._on_change, self._interval = path, on_change, interval
        self._current = current if current is not None else Destinations.empty()
        self._logged_bad: str | None = None  # fingerprint of the invalid version logged
        self._logged_unreadable = False

    @property
    def current(self) -> Destinations:
        """The configuration in force."""
        return self._current

    def check(self) -> bool:
        """Load the file if its content changed; True if the configuration was replaced."""
        # Hash the content rather than trust the mtime: a same-size edit within the mtime
        # granularity, or a Kubernetes ConfigMap's symlink swap, would go unnoticed.
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            if not self._logged_unreadable:
                self._logged_unreadable = True
                _log.error(
                    "Destinations file unreadable; keeping the previous configuration.",
                    extra={"file": str(self._path), "error": exc.strerror or type(exc).__name__},
                )
            return False
        self._logged_unreadable = False
        fingerprint = hashlib.sha256(data).hexdigest()
        if fingerprint == self._current.fingerprint:
            self._logged_bad = None  # reverted: breaking it again is news again
            return False
        if fingerprint == self._logged_bad:
            return False
        try:
            new = _parse(data, self._path)
        except DestinationsError as exc:
            self._logged_bad = fingerprint
            _log.error(
                "Destinations file invalid; keeping the previous configuration.",
                extra={"file": str(self._path), "problems": exc.problems},
            )
            return False
        old, self._current, self._logged_bad = self._current, new, None
        self._on_change(old, new)
        return True

    async def run(self) -> None:
        """:meth:`check` every ``interval`` seconds until cancelled.

        Synchronously on the loop, not in a thread: the file is a few kilobytes (microseconds
        to read and hash), and ``on_change`` must run on the loop's thread anyway.
        """
        while True:
            try:
                self.check()
            except Exception:
                # The new configuration is in force; a failing callback must not stop reloads.
                _log.exception("Destinations on_change callback failed.")
            await asyncio.sleep(self._interval)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys with their lines (safe_load keeps the last)."""

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_document(self, node: yaml.Node) -> Any:
        self._find_duplicates(node, (), set())
        return super().construct_document(node)

    def _find_duplicates(self, node: yaml.Node, path: tuple[Any, ...], seen: set[int]) -> None:
        if id(node) in seen:  # aliases share nodes, and may be recursive
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._find_duplicates(item, (*path, index), seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key: Any = None
                # Merge ("<<") and value ("=") keys have no constructor of their own.
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag not in _SPECIAL_KEYS:
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    if key in first:
                        where, lines = _render((*path, key)), f"lines {first[key]} and {line}"
                        self.duplicates.append(f"{where}: duplicate key ({lines})")
                    first.setdefault(key, line)
                self._find_duplicates(value_node, (*path, key), seen)


def _parse(data: bytes, source: Path) -> Destinations:
    try:
        loader = _StrictLoader(data)  # decodes ahead already: may raise ReaderError
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        # PyYAML's problem texts quote at most a character, a tag or an alias name.
        mark = exc.problem_mark or exc.context_mark
        pos = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DestinationsError([f"{pos}{exc.problem or 'not valid YAML'}"], str(source)) from exc
    except yaml.YAMLError as exc:  # not UTF-8/16 text, or a forbidden control character
        pos = f"byte {exc.position}: " if isinstance(exc, yaml.reader.ReaderError) else ""
        raise DestinationsError([f"{pos}not valid YAML text"], str(source)) from exc
    problems = list(loader.duplicates)
    entries: Any = None
    if isinstance(document, dict):
        problems += [
            f"{_render((k,))}: {_unknown(k, ['tenants'])}" for k in document if k != "tenants"
        ]
        entries = document.get("tenants")
    elif document is not None:
        problems.append("(top level): must be a mapping with a 'tenants' key")
    if entries is not None and not isinstance(entries, dict):
        problems.append("tenants: must be a mapping of tenant id to destinations")
    parsed: dict[str, TenantDestinations] = {}
    for tenant, entry in entries.items() if isinstance(entries, dict) else ():
        at = ("tenants", tenant)
        if not isinstance(tenant, str):
            problems.append(f"tenants: tenant id {tenant!r} is not a string; quote it")
        elif tenant != DEFAULT_TENANT and not _TENANT_ID.fullmatch(tenant):
            problems.append(
                f"{_render(at)}: tenant id must match [A-Za-z0-9][A-Za-z0-9_.:-]* "
                'and have at most 128 characters, or be "*"'
            )
        elif entry is not None and not isinstance(entry, dict):
            problems.append(f"{_render(at)}: must be a mapping of webhook, syslog, storage")
        else:
            try:
                parsed[tenant] = TenantDestinations.model_validate(entry or {})
            except ValidationError as exc:
                problems += _describe(exc, at)
    if problems:
        raise DestinationsError(_redact(problems, document), str(source))
    default = parsed.pop(DEFAULT_TENANT, None)
    return Destinations(source, MappingProxyType(parsed), default, hashlib.sha256(data).hexdigest())


def _describe(exc: ValidationError, at: tuple[Any, ...]) -> list[str]:
    """Problems from each error's ``loc`` and ``msg``: never ``input``, which holds values."""
    errors = [(e, tuple(p for p in e["loc"] if not _is_tag(p))) for e in exc.errors()]
    by_path: dict[str, list[str]] = {}
    for error, loc in errors:
        # A union reports every member: if one got past the type check (a list, for "string or
        # list of strings"), its deeper errors are the relevant ones, not the others' mismatch.
        shallow = bool(error["loc"]) and _is_tag(error["loc"][-1])
        if shallow and any(len(o) > len(loc) and o[: len(loc)] == loc for _, o in errors):
            continue
        if error["type"] == "extra_forbidden":
            text = _unknown(loc[-1], _fields_at(loc[:-1]))
        else:
            text = error["msg"].removeprefix("Value error, ")
        if loc[-1:] == ("[key]",):
            loc, text = loc[:-1], f"key: {text}"
        texts = by_path.setdefault(_render((*at, *loc)), [])
        texts += [text] if text not in texts else []
    return [f"{path}: {'; or '.join(texts)}" for path, texts in by_path.items()]


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and _UNION_TAG.fullmatch(part) is not None


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` of a tenant entry (for "did you mean" hints)."""
    model: type[BaseModel] = TenantDestinations
    for part in loc:
        info = model.model_fields.get(str(part))
        kinds = (info.annotation, *typing.get_args(info.annotation)) if info else ()
        models = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _unknown(key: Any, allowed: list[str]) -> str:
    guess = difflib.get_close_matches(str(key), allowed, n=1)
    return f"unknown key (did you mean {guess[0]!r}?)" if guess else "unknown key"


def _render(loc: tuple[Any, ...]) -> str:
    """``tenants.tnt_a.webhook.url``; other keys JSON-quoted (``tenants."*"``), indexes ``[0]``."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            plain = isinstance(part, str) and _PLAIN_KEY.fullmatch(part)
            text += ("." if text else "") + (part if plain else json.dumps(str(part)))
    return text or "(top level)"


def _redact(problems: list[str], document: Any) -> list[str]:
    values = sorted({v for v in _strings(document, set()) if len(v) >= _MIN_REDACTED}, key=len)
    for value in reversed(values):  # longest first, so that no part of one survives
        problems = [p.replace(value, "<redacted>") for p in problems]
    return problems


def _strings(node: Any, seen: set[int]) -> Iterator[str]:
    """Every string value (not key) of the document: anything that may be a secret."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict | list) and id(node) not in seen:
        seen.add(id(node))
        for child in node.values() if isinstance(node, dict) else node:
            yield from _strings(child, seen)
