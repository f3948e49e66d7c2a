"""Opaque pagination cursors, signed so that a client can neither forge nor transplant them.

Who calls it: the list endpoint (``connectors.api.app``) encodes a cursor for the next page and
decodes the one a client sends back. A cursor is ``<payload>.<signature>``, both base64url
without padding. The payload is compact JSON::

    {"v": 1, "o": "t", "f": "<filter digest>", "w": [start_ms, end_ms], "p": [ts_ms, "evt_…"]}
    {"v": 1, "o": "i", "f": "<filter digest>", "w": null, "s": 1234}

``o`` is the order (``t`` timestamp, ``i`` ingestion), ``f`` the digest of the filter
parameters the first page was asked with, ``w`` the time window resolved on the first page (so
"the last 24 hours" does not slide while a client pages), ``p`` the last (timestamp, event_id)
returned, ``s`` the last ingestion sequence returned (``null``: nothing yet).

The signature is HMAC-SHA256 over a domain label, the tenant id and the payload. Binding the
tenant into the MAC, not the payload, means a cursor presented by another tenant's account
fails exactly like a forged one and tells that account nothing. The filter digest is compared
by the caller after verification, so a client that changes filters between pages gets a 400
that says so. Cursors are signed, not encrypted: the position is the client's own data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import SecretStr

from connectors.api.errors import CursorError

Order = Literal["timestamp", "ingestion"]

MAX_CURSOR_LENGTH = 1024
_VERSION = 1
_DOMAIN = b"siem-export/audit-events/cursor/v1\x00"
_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,900}\.[A-Za-z0-9_-]{43}\Z")
_ORDER_CODE: dict[Order, str] = {"timestamp": "t", "ingestion": "i"}
_CODE_ORDER: dict[str, Order] = {code: order for order, code in _ORDER_CODE.items()}
_MAX_MS = 253402300800000
_MAX_SEQUENCE = 2**63 - 1


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts, and what the first page was asked for."""

    order: Order
    filter_digest: str
    window: tuple[int, int] | None = None
    after: tuple[int, str] | None = None
    after_sequence: int | None = None


def filter_digest(canonical: bytes) -> str:
    """Short digest of a canonical rendering of the filter parameters (base64url, 128 bits)."""
    return _b64(hashlib.sha256(canonical).digest()[:16])


class CursorCodec:
    """Signs and verifies cursors with the current secret (and accepts previous ones)."""

    def __init__(self, secret: SecretStr, previous: Sequence[SecretStr] = ()) -> None:
        self._keys = [_derive(s) for s in (secret, *previous)]

    def encode(self, tenant_id: str, cursor: Cursor) -> str:
        """The opaque cursor string handed to the client of ``tenant_id``."""
        payload: dict[str, Any] = {
            "v": _VERSION,
            "o": _ORDER_CODE[cursor.order],
            "f": cursor.filter_digest,
            "w": list(cursor.window) if cursor.window else None,
        }
        if cursor.order == "timestamp":
            payload["p"] = list(cursor.after) if cursor.after else None
        else:
            payload["s"] = cursor.after_sequence
        raw = orjson.dumps(payload)
        return f"{_b64(raw)}.{_b64(_mac(self._keys[0], tenant_id, raw))}"

    def decode(self, tenant_id: str, text: str) -> Cursor:
        """Verify and parse a cursor presented by ``tenant_id``; ``CursorError`` if unusable."""
        if len(text) > MAX_CURSOR_LENGTH or not _SHAPE.match(text):
            raise CursorError("malformed cursor; pass next_cursor exactly as it was returned")
        encoded_payload, encoded_mac = text.split(".")
        try:
            raw = _unb64(encoded_payload)
            mac = _unb64(encoded_mac)
        except (binascii.Error, ValueError):
            raise CursorError(
                "malformed cursor; pass next_cursor exactly as it was returned"
            ) from None
        # Step 1. Authenticity (and tenant) before looking at a single field of the payload.
        if not any(hmac.compare_digest(_mac(k, tenant_id, raw), mac) for k in self._keys):
            raise CursorError("cursor signature does not verify (altered, or not issued to you)")
        # Step 2. Shape: a verified payload is ours, but a bug in an older release may not be.
        try:
            return _parse(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CursorError("cursor is from an incompatible version; start again") from None


def _parse(data: Any) -> Cursor:
    if not isinstance(data, dict) or data.get("v") != _VERSION:
        raise ValueError("version")
    order = _CODE_ORDER[data["o"]]
    digest = data["f"]
    if not isinstance(digest, str):
        raise TypeError("digest")
    window = _window(data["w"])
    if order == "timestamp":
        if window is None:
            raise ValueError("window")
        return Cursor(order, digest, window, after=_position(data["p"]))
    seq = data["s"]
    if seq is not None and not (_is_int(seq) and 0 <= seq <= _MAX_SEQUENCE):
        raise ValueError("sequence")
    return Cursor(order, digest, window, after_sequence=seq)


def _window(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    start, end = value
    if not (_is_int(start) and _is_int(end) and 0 <= start < end <= _MAX_MS):
        raise ValueError("window")
    return int(start), int(end)


def _position(value: Any) -> tuple[int, str] | None:
    if value is None:
        return None
    ts, event_id = value
    if not (_is_int(ts) and 0 <= ts <= _MAX_MS and isinstance(event_id, str) and event_id):
        raise ValueError("position")
    return int(ts), event_id


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _derive(secret: SecretStr) -> bytes:
    # A key of its own for cursors, so the configured secret is never used raw.
    return hmac.new(secret.get_secret_value().encode(), b"cursor-signing-key", "sha256").digest()


def _mac(key: bytes, tenant_id: str, payload: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + tenant_id.encode() + b"\x00" + payload, "sha256").digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
