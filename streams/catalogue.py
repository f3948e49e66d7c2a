"""The action catalogue: what each audit action means, how severe it is, where it maps in OCSF.

The data lives in ``schemas/actions.yaml`` (shipped as package data of ``schemas``); this module
loads it once, checks it, and answers questions about actions. It is used by
``streams.event`` (which categories exist), by the syslog connector (severity), by the
generator (realistic actions) and by anything that labels events for a SIEM.

Severity rule. An action's catalogue severity is the severity of a *successful* operation.
For an outcome of ``failure`` or ``denied`` the result is raised to an *outcome floor*: the
more severe of the action's severity and the floor wins. Floors come from
``defaults.outcome_floor`` (failure -> notice, denied -> warning) and may be tightened per
category (authentication, machine_account and pki failures -> warning; security failures and
denials -> warning at least). An action that is not listed but belongs to a known category
gets the category's ``default_severity`` and ``default_ocsf``; an action of an unknown category
gets the catalogue-wide default severity and no OCSF class.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from importlib.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from streams.errors import ConfigError

__all__ = [
    "ActionInfo",
    "Catalogue",
    "Category",
    "OcsfClass",
    "Severity",
    "categories",
    "category_names",
    "category_of",
    "load_catalogue",
    "lookup",
    "ocsf_for",
    "parse_catalogue",
    "schemas_dir",
    "severity_for",
]

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


class Severity(IntEnum):
    """Syslog severities (RFC 5424); a lower value is more severe, as on the wire."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7

    @property
    def label(self) -> str:
        """The lower-case name used in the catalogue (``informational``)."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Severity:
        """Return the severity named ``label``; ``ValueError`` if there is none."""
        try:
            return cls[label.upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {label!r} (expected one of {names})") from None


@dataclass(frozen=True, slots=True)
class OcsfClass:
    """An OCSF event class (``3002``, ``"Authentication"``)."""

    class_uid: int
    class_name: str


@dataclass(frozen=True, slots=True)
class Category:
    """One of the eight action categories (the part of an action before the dot)."""

    name: str
    display_name: str
    description: str
    default_severity: Severity
    default_ocsf: OcsfClass
    outcome_floor: Mapping[str, Severity]


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """One catalogued action."""

    action: str
    category: str
    verb: str
    severity: Severity
    description: str
    ocsf: OcsfClass
    resource_type: str


@dataclass(frozen=True)
class Catalogue:
    """The whole catalogue, read-only. Obtain it with :func:`load_catalogue`."""

    version: int
    default_severity: Severity
    outcome_floor: Mapping[str, Severity]
    categories: Mapping[str, Category]
    actions: Mapping[str, ActionInfo] = field(repr=False)

    def lookup(self, action: str) -> ActionInfo | None:
        """The catalogue entry of ``action``, or ``None`` if it is not listed."""
        return self.actions.get(action)

    def category_of(self, action: str) -> str | None:
        """The known category of ``action`` (its prefix before the first dot), else ``None``."""
        prefix, dot, _ = action.partition(".")
        return prefix if dot and prefix in self.categories else None

    def severity_for(self, action: str, outcome: str = "success") -> Severity:
        """Severity of an event with this action and outcome (see the module's rule)."""
        info = self.actions.get(action)
        cat_name = self.category_of(action)
        cat = self.categories[cat_name] if cat_name is not None else None
        if info is not None:
            base = info.severity
        elif cat is not None:
            base = cat.default_severity
        else:
            base = self.default_severity
        floor = cat.outcome_floor.get(outcome) if cat is not None else None
        if floor is None:
            floor = self.outcome_floor.get(outcome)
        return base if floor is None else Severity(min(base, floor))

    def ocsf_for(self, action: str) -> OcsfClass | None:
        """OCSF class of ``action``: its own, its category's default, or ``None``."""
        info = self.actions.get(action)
        if info is not None:
            return info.ocsf
        cat_name = self.category_of(action)
        return self.categories[cat_name].default_ocsf if cat_name is not None else None


# --------------------------------------------------------------------------- loading


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"schemas/actions.yaml: {where}: {message}")


def _mapping(value: object, where: str, keys: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "must be a mapping")
    unknown = sorted(str(k) for k in value if k not in keys | optional)
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}")
    missing = sorted(keys - set(value))
    if missing:
        raise _fail(where, f"missing key(s) {', '.join(missing)}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, "must be a non-empty string")
    return value


def _severity(value: object, where: str) -> Severity:
    try:
        return Severity.from_label(_text(value, where))
    except ValueError as exc:
        raise _fail(where, str(exc)) from None


def _ocsf(value: object, where: str) -> OcsfClass:
    raw = _mapping(value, where, {"class_uid", "class_name"}, set())
    uid = raw["class_uid"]
    if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
        raise _fail(f"{where}.class_uid", "must be a positive integer")
    return OcsfClass(uid, _text(raw["class_name"], f"{where}.class_name"))


def _floors(value: object, where: str) -> Mapping[str, Severity]:
    raw = _mapping(value, where, set(), {"failure", "denied"})
    return MappingProxyType({k: _severity(v, f"{where}.{k}") for k, v in raw.items()})


def _parse(doc: object) -> Catalogue:
    top = _mapping(doc, "top level", {"version", "defaults", "categories", "actions"}, set())
    if top["version"] != 1:
        raise _fail("version", f"unsupported catalogue version {top['version']!r}")
    defaults = _mapping(top["defaults"], "defaults", {"severity", "outcome_floor"}, set())
    cats: dict[str, Category] = {}
    raw_cats = top["categories"]
    if not isinstance(raw_cats, dict) or not raw_cats:
        raise _fail("categories", "must be a non-empty mapping")
    for name, raw in raw_cats.items():
        where = f"categories.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(where, "category names are lower snake_case")
        c = _mapping(
            raw,
            where,
            {"display_name", "description", "default_severity", "default_ocsf"},
            {"outcome_floor"},
        )
        cats[name] = Category(
            name=name,
            display_name=_text(c["display_name"], f"{where}.display_name"),
            description=_text(c["description"], f"{where}.description"),
            default_severity=_severity(c["default_severity"], f"{where}.default_severity"),
            default_ocsf=_ocsf(c["default_ocsf"], f"{where}.default_ocsf"),
            outcome_floor=_floors(c.get("outcome_floor", {}), f"{where}.outcome_floor"),
        )
    actions: dict[str, ActionInfo] = {}
    raw_actions = top["actions"]
    if not isinstance(raw_actions, dict):
        raise _fail("actions", "must be a mapping")
    for action, raw in raw_actions.items():
        where = f"actions.{action}"
        a = _mapping(
            raw, where, {"category", "severity", "description", "ocsf", "resource_type"}, set()
        )
        prefix, dot, verb = str(action).partition(".")
        if not dot or not _NAME.match(prefix) or not _NAME.match(verb):
            raise _fail(where, "actions are written category.verb in lower snake_case")
        if a["category"] != prefix or prefix not in cats:
            raise _fail(f"{where}.category", f"must be the action's known prefix {prefix!r}")
        resource_type = _text(a["resource_type"], f"{where}.resource_type")
        if not _NAME.match(resource_type):
            raise _fail(f"{where}.resource_type", "must be lower snake_case")
        actions[action] = ActionInfo(
            action=action,
            category=prefix,
            verb=verb,
            severity=_severity(a["severity"], f"{where}.severity"),
            description=_text(a["description"], f"{where}.description"),
            ocsf=_ocsf(a["ocsf"], f"{where}.ocsf"),
            resource_type=resource_type,
        )
    return Catalogue(
        version=1,
        default_severity=_severity(defaults["severity"], "defaults.severity"),
        outcome_floor=_floors(defaults["outcome_floor"], "defaults.outcome_floor"),
        categories=MappingProxyType(cats),
        actions=MappingProxyType(actions),
    )


def parse_catalogue(text: str) -> Catalogue:
    """Parse catalogue YAML text; ``ConfigError`` names the first defect found."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"schemas/actions.yaml is not valid YAML: {exc}") from exc
    return _parse(doc)


def schemas_dir() -> Traversable:
    """The folder of the ``schemas`` package (catalogue, JSON Schema, ``avro/``)."""
    try:
        return importlib.resources.files("schemas")
    except NotADirectoryError:
        # A stale editable install can expose ``schemas`` as a namespace package, which
        # importlib.resources cannot open on Python 3.11; its real folder is on __path__.
        import schemas

        for entry in getattr(schemas, "__path__", []):
            if Path(entry).is_dir():
                return Path(entry)
        raise


@functools.cache
def load_catalogue() -> Catalogue:
    """The packaged catalogue, read and checked on first use and cached for the process."""
    text = schemas_dir().joinpath("actions.yaml").read_text(encoding="utf-8")
    return parse_catalogue(text)


def lookup(action: str) -> ActionInfo | None:
    """Catalogue entry of ``action`` or ``None`` (see :meth:`Catalogue.lookup`)."""
    return load_catalogue().lookup(action)


def category_of(action: str) -> str | None:
    """Known category name of ``action`` or ``None`` (see :meth:`Catalogue.category_of`)."""
    return load_catalogue().category_of(action)


def categories() -> tuple[Category, ...]:
    """The eight categories, in catalogue order."""
    return tuple(load_catalogue().categories.values())


def category_names() -> tuple[str, ...]:
    """Names of the categories (the allowed action prefixes), in catalogue order."""
    return tuple(load_catalogue().categories)


def severity_for(action: str, outcome: str = "success") -> Severity:
    """Effective severity for an action and an outcome (see the module docstring)."""
    return load_catalogue().severity_for(action, outcome)


def ocsf_for(action: str) -> OcsfClass | None:
    """OCSF class for an action (see :meth:`Catalogue.ocsf_for`)."""
    return load_catalogue().ocsf_for(action)
