"""Checking of the free-form ``metadata`` object of audit events, and its JSON value type.

An event's ``metadata`` is any JSON object. :func:`check_metadata` copies it to plain JSON values
and lists what is wrong: integers must fit in a signed 64-bit integer, floats must be finite,
strings and keys must be valid UTF-8 (no unpaired surrogates), and containers nest at most
:data:`MAX_METADATA_DEPTH` deep (the metadata object counts as one level). Tuples become lists
and key order is kept. Only the first few problems are listed; the rest are counted.

Called by :func:`streams.event.validate_event`, which re-exports the public names here;
``streams.avro_v1`` and ``streams.codec`` use the same limits when encoding and decoding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeAlias

from streams.errors import FieldProblem

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_METADATA_DEPTH",
    "JsonValue",
    "check_metadata",
    "json_type_name",
]

JsonValue: TypeAlias = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]

MAX_METADATA_DEPTH = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_MAX_METADATA_PROBLEMS = 10
_SURROGATES = re.compile(r"[\ud800-\udfff]")

_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    ((list, tuple), "array"),
    (Mapping, "object"),
)


def json_type_name(value: object) -> str:
    """JSON name of a value's type, for messages."""
    return next((n for t, n in _TYPE_NAMES if isinstance(value, t)), type(value).__name__)


def check_metadata(value: Mapping[Any, object]) -> tuple[dict[str, JsonValue], list[FieldProblem]]:
    """The checked copy of a ``metadata`` object and its problems (empty if it is valid).

    Problems are listed under ``metadata...`` paths; after the first few, a last problem on
    ``metadata`` says how many more were not listed.
    """
    checker = _MetadataChecker()
    out = checker.json_object(value, "metadata", 1)
    if checker.count > _MAX_METADATA_PROBLEMS:
        hidden = checker.count - _MAX_METADATA_PROBLEMS
        checker.problems.append(FieldProblem("metadata", f"{hidden} more problem(s) not listed"))
    return out, checker.problems


class _MetadataChecker:
    """Collects the problems of one metadata object."""

    def __init__(self) -> None:
        self.problems: list[FieldProblem] = []
        self.count = 0

    def meta(self, path: str, message: str) -> None:
        """Record a problem; only the first few are listed, the rest are counted."""
        self.count += 1
        if self.count <= _MAX_METADATA_PROBLEMS:
            self.problems.append(FieldProblem(path, message))

    def json(self, value: object, path: str, depth: int) -> JsonValue:
        """Copy of a metadata value, or ``None`` after recording a problem."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                self.meta(path, "integer does not fit in 64 bits")
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                self.meta(path, "must be a finite number (NaN and infinities are not JSON)")
            return float(value)
        if isinstance(value, str):
            if _SURROGATES.search(value):
                self.meta(path, "string contains unpaired surrogates (not valid UTF-8)")
            return str(value)
        if isinstance(value, list | tuple | Mapping):
            if depth >= MAX_METADATA_DEPTH:
                self.meta(path, f"nested deeper than {MAX_METADATA_DEPTH} levels")
                return None
            if isinstance(value, Mapping):
                return self.json_object(value, path, depth + 1)
            return [self.json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        self.meta(path, f"must be a JSON value, got {json_type_name(value)}")
        return None

    def json_object(
        self, value: Mapping[Any, object], path: str, depth: int
    ) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.meta(f"{path}.{key!r}", "object keys must be strings")
            elif _SURROGATES.search(key):
                self.meta(f"{path}.{key!r}", "key contains unpaired surrogates")
            else:
                out[str(key)] = self.json(item, f"{path}.{key}", depth)
        return out
