"""Standard Webhooks signatures (https://www.standardwebhooks.com) for the webhook sink.

The webhook sink signs every HTTPS POST it makes with :class:`WebhookSigner`, built once per
destination from the destination's ``signing_secret`` (several secrets while one is being
rotated). :meth:`WebhookSigner.headers` returns the three headers to add to the request:

* ``webhook-id``: the event's ``event_id``, or for a request carrying several events
  :func:`batch_message_id` of their ids. It is the receiver's idempotency key, so it must be the
  same on every retry of the same request: retry the same events in the same order.
* ``webhook-timestamp``: the time of this attempt in unix seconds. Take a fresh one for every
  attempt (the default), because receivers refuse timestamps older than a few minutes to stop
  replays, and retries can run for hours.
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``, one per
  secret, separated by spaces; a receiver accepts the request if any of them matches its secret,
  which is what makes rotation free of downtime.

Receivers verify with any Standard Webhooks library (``standardwebhooks`` for Python, Svix's
libraries, ...) given the same ``whsec_`` secret. The body must be signed byte for byte as sent.

Secrets never appear in error messages or reprs, since both end up in logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Sequence

__all__ = [
    "MAX_KEY_BYTES",
    "MIN_KEY_BYTES",
    "WHSEC_PREFIX",
    "WebhookSigner",
    "batch_message_id",
    "parse_secret",
]

WHSEC_PREFIX = "whsec_"
# The spec asks for 24..64 bytes; 16 is the floor we still accept so that shorter secrets a
# receiver already has keep working, while trivially guessable ones are refused.
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 64

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# Printable ASCII without space: header values must reach the receiver byte for byte, since it
# recomputes the signature from the header text, and a space would split the signed content.
_MESSAGE_ID = re.compile(r"[\x21-\x7e]+")


def parse_secret(value: str) -> bytes:
    """Return the HMAC key of a Standard Webhooks secret ``whsec_<base64 of the key>``.

    The key must decode to 16..64 bytes; 24..64 random bytes are recommended (the spec's
    range). Standard base64 is expected, with or without its ``=`` padding, as receivers'
    libraries accept both. Asymmetric keys (``whsk_``/``whpk_``) are not supported.

    Raises ``ValueError`` naming what is wrong; the message never contains the secret or any
    part of it, so it is safe to log.
    """
    if not isinstance(value, str):
        raise TypeError(f"webhook secret must be a string, not {type(value).__name__}")
    if value != value.strip():
        raise ValueError("webhook secret has leading or trailing whitespace")
    if value.startswith(("whsk_", "whpk_")):
        raise ValueError("webhook secret is an asymmetric key; only whsec_ secrets are supported")
    if not value.startswith(WHSEC_PREFIX):
        raise ValueError(f"webhook secret must start with {WHSEC_PREFIX!r}")
    encoded = value[len(WHSEC_PREFIX) :]
    if not encoded:
        raise ValueError(f"webhook secret is empty after {WHSEC_PREFIX!r}")
    unpadded = encoded.rstrip("=")
    if not _BASE64.fullmatch(encoded) or len(unpadded) % 4 == 1:
        raise ValueError(f"webhook secret is not standard base64 after {WHSEC_PREFIX!r}")
    try:
        key = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error:
        # binascii's message is free of the input today, but do not rely on it.
        raise ValueError(f"webhook secret is not standard base64 after {WHSEC_PREFIX!r}") from None
    if not key:
        raise ValueError("webhook secret decodes to an empty key")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"webhook secret key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required "
            "(24 to 64 random bytes are recommended)"
        )
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(
            f"webhook secret key is {len(key)} bytes; at most {MAX_KEY_BYTES} are allowed"
        )
    return key


class WebhookSigner:
    """Signs webhook requests with one or more secrets (several while rotating).

    Built from ``whsec_`` secrets in the order given; a secret whose key repeats an earlier one
    is dropped. Each secret is parsed once here, so a wrong one fails at start-up, not on the
    first request. Safe to share between tasks and threads: signing only copies keyed state.
    """

    __slots__ = ("_macs",)

    def __init__(self, secrets: Sequence[str]) -> None:
        if isinstance(secrets, str):
            # A lone string is a Sequence[str] too; iterating its characters would be nonsense.
            raise TypeError("secrets must be a sequence of secret strings, not a single string")
        keys: list[bytes] = []
        for number, secret in enumerate(secrets, start=1):
            try:
                key = parse_secret(secret)
            except ValueError as exc:
                raise ValueError(f"signing secret #{number}: {exc}") from None
            if key not in keys:
                keys.append(key)
        if not keys:
            raise ValueError("at least one signing secret is required")
        # Keyed HMAC state is computed once; each signature copies it, so neither the key
        # schedule nor a concatenation of a large body is repeated per request.
        self._macs = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in keys)

    @property
    def key_count(self) -> int:
        """How many distinct keys sign each request (one signature each)."""
        return len(self._macs)

    def headers(self, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """Return the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers.

        ``msg_id`` is the event id (or :func:`batch_message_id`) and must be printable ASCII
        without spaces. ``body`` is the exact request body. ``timestamp`` is the attempt's unix
        time in seconds, now by default. The same arguments always give the same headers.
        """
        if not isinstance(msg_id, str) or not _MESSAGE_ID.fullmatch(msg_id):
            raise ValueError(
                "webhook message id must be non-empty printable ASCII without whitespace"
            )
        if timestamp is None:
            timestamp = int(time.time())
        elif isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
            # bool is an int; True would be rendered as "True" and sign garbage.
            raise ValueError("webhook timestamp must be a non-negative integer of unix seconds")
        to_sign = f"{msg_id}.{timestamp}.".encode("ascii")
        signatures: list[str] = []
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(to_sign)
            mac.update(body)
            signatures.append("v1," + base64.b64encode(mac.digest()).decode("ascii"))
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signatures),
        }

    def __repr__(self) -> str:
        return f"WebhookSigner(keys={len(self._macs)})"


def batch_message_id(event_ids: Sequence[str]) -> str:
    """Return the ``webhook-id`` of a request carrying ``event_ids``, stable across retries.

    One event: its own id, so single-event requests are keyed like the event. Several:
    ``batch_`` and the first 32 hex digits of SHA-256 over the ids joined by newlines, so the
    same events in the same order always give the same id and any other batch a different one.
    """
    if isinstance(event_ids, str):
        raise TypeError("event_ids must be a sequence of event ids, not a single string")
    if not event_ids:
        raise ValueError("a webhook batch needs at least one event id")
    joined = "\n".join(event_ids)
    # A newline inside an id would let two different batches join to the same text. Checked on
    # the joined text (one scan in C, not a Python loop over a hundred ids per request).
    if joined.count("\n") != len(event_ids) - 1 or "" in event_ids:
        raise ValueError("event ids in a webhook batch must be non-empty and newline-free")
    if len(event_ids) == 1:
        return joined
    return "batch_" + hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]
