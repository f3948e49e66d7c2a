"""Turning events into one webhook request: body, content type, format headers, signature.

Who calls it: the webhook sink, once per request, with the events that request carries (one
by default; up to ``max_events_per_request`` of a backlog). The bytes of each event are the
spec's JSON exactly as customers receive it everywhere else (``Envelope.json``).

Formats:

* ``generic`` with ``max_events_per_request: 1``: the body is the event object itself.
* ``generic`` with more per request: always a collection, so a receiver sees one shape whether
  the backlog held one event or many: a JSON array (``batch_encoding: json_array``) or one
  event per line (``ndjson``, ``application/x-ndjson``).
* ``splunk_hec``: HTTP Event Collector envelopes, one per event, concatenated with newlines
  (HEC's batch form): ``time`` (epoch seconds with milliseconds, from the event's timestamp),
  ``host``, ``source``, ``sourcetype``, optional ``index``, and ``event`` (the event JSON).
  ``Authorization: Splunk <token>`` and ``X-Splunk-Request-Channel`` are added.

Signing (Standard Webhooks) covers the exact body bytes; ``webhook-id`` is the event id, or a
stable digest of the ids for a multi-event request, so retries carry the same id.

Cost: a multi-event body is built without encoding each event on its own first. The events the
engine hands over are canonical (``AuditEvent``: keys in delivery order, every optional key
present, as the codec and ``validate_event`` make them), so ``orjson.dumps(event)`` is exactly
``Envelope.json`` (``to_json_bytes``, which rebuilds the dict in that order) and one
``orjson.dumps`` of the list is exactly the JSON array of those bytes. NDJSON and HEC bodies are
appended to one buffer, each event's bytes freed at once (keeping a hundred small encodings
alive and joining them costs several times more). ``tests/unit/test_webhook_encoder.py`` checks
every body byte for byte against the straightforward per-event encoding.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from connectors.webhook.config import WebhookDestination
from connectors.webhook.signing import WebhookSigner, batch_message_id
from streams.engine.sink import Envelope
from streams.event import parse_timestamp

_JSON = "application/json"
_NDJSON = "application/x-ndjson"
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE
# HEC "time" of a canonical timestamp (YYYY-MM-DDTHH:MM:SS.mmmZ): the text up to the decimal
# point per whole second (shared by every encoder, bounded), then the three millisecond digits.
_HEC_TIME_HEAD: dict[str, bytes] = {}
# Channel ids derived for tenants that did not set one: stable per tenant and URL.
_CHANNEL_NAMESPACE = uuid.UUID("5a1e2b9c-0d6f-4e8a-9b1c-2f3e4d5c6b7a")


@dataclass(frozen=True, slots=True)
class Request:
    """One POST, ready for the transport (custom headers are added there)."""

    body: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)  # may hold the Splunk token
    message_id: str
    events: int


class RequestEncoder:
    """Encodes batches for one tenant's destination (built once per destination)."""

    def __init__(self, tenant_id: str, dest: WebhookDestination, default_host: str) -> None:
        self._dest = dest
        secrets = dest.secrets()
        self._signer = WebhookSigner(secrets) if secrets else None
        self._static: dict[str, str] = {}
        self._hec_prefix = b""
        if dest.format == "splunk_hec":
            splunk = dest.splunk
            assert splunk is not None  # noqa: S101 - the config model guarantees it
            channel = splunk.channel or str(
                uuid.uuid5(_CHANNEL_NAMESPACE, f"{tenant_id}\n{dest.url}")
            )
            self._static = {
                "Authorization": f"Splunk {splunk.token.get_secret_value()}",
                "X-Splunk-Request-Channel": channel,
            }
            fields: dict[str, str] = {
                "host": splunk.host or default_host,
                "source": splunk.source,
                "sourcetype": splunk.sourcetype,
            }
            if splunk.index:
                fields["index"] = splunk.index
            # Every envelope shares these fields; only time and event differ.
            self._hec_prefix = orjson.dumps(fields)[1:-1]

    def __repr__(self) -> str:
        return f"RequestEncoder(format={self._dest.format!r}, signed={self._signer is not None})"

    def encode(self, batch: Sequence[Envelope]) -> Request:
        """The request carrying ``batch`` (at least one event, in order)."""
        dest = self._dest
        if dest.format == "splunk_hec":
            body = self._hec_body(batch)
            content_type = _JSON
        elif dest.max_events_per_request == 1 and len(batch) == 1:
            body = batch[0].json
            content_type = _JSON
        elif dest.batch_encoding == "ndjson":
            lines = bytearray()
            for env in batch:
                lines += _dumps(env.event, option=_NEWLINE)
            body = bytes(lines)
            content_type = _NDJSON
        else:
            body = _dumps([env.event for env in batch])
            content_type = _JSON
        message_id = batch_message_id([env.event["event_id"] for env in batch])
        headers = {"Content-Type": content_type, **self._static}
        if self._signer is not None:
            headers.update(self._signer.headers(message_id, body))
        return Request(body, headers, message_id, len(batch))

    def _hec_body(self, batch: Sequence[Envelope]) -> bytes:
        """HEC envelopes, one per line (no newline after the last)."""
        middle = b"," + self._hec_prefix + b',"event":'
        out = bytearray()
        for env in batch:
            out += _hec_time(env.event["timestamp"])
            out += middle
            out += _dumps(env.event)
            out += b"}\n"
        del out[-1:]
        return bytes(out)


def _hec_time(stamp: str) -> bytes:
    """``{"time":<epoch seconds>.<milliseconds>`` of an event timestamp. The text up to the
    decimal point is kept per whole second (``_HEC_TIME_HEAD``, bounded) for canonical
    timestamps (``YYYY-MM-DDTHH:MM:SS.mmmZ``); anything else is parsed each time."""
    millis = stamp[20:23]
    canonical = len(stamp) == 24 and stamp[19::4] == ".Z" and millis.isascii() and millis.isdigit()
    if canonical:
        head = _HEC_TIME_HEAD.get(stamp[:19])
        if head is not None:
            return head + millis.encode()
    seconds, ms = divmod(parse_timestamp(stamp), 1000)
    if canonical:
        if len(_HEC_TIME_HEAD) >= 4096:
            _HEC_TIME_HEAD.clear()
        _HEC_TIME_HEAD[stamp[:19]] = b'{"time":%d.' % seconds
    return b'{"time":%d.%03d' % (seconds, ms)
