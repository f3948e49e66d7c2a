"""What a connector implements to receive events from the engine, and what it receives.

A sink never sees a Kafka message: it gets ``Envelope``s (one decoded event each, with where
it came from) of ONE tenant, in partition order, and answers one of three ways:

* return ``None``: every event of the batch is acknowledged by the destination;
* return ``SendResult(rejected={index: reason})``: those events were refused for good (they
  go to the dead-letter topic with the reason), the others are acknowledged;
* return ``SendResult(pending=future)``: the sink took the events into its own custody (a
  file being assembled, say) and resolves the future once they are durable, or fails it;
  the engine goes on handing it the next batches meanwhile and acknowledges in order;
* return ``SendResult(settled=n)`` (with or without ``rejected``/``pending``): the answer
  covers only the first ``n`` events (one request of a destination that takes fewer events
  than it was offered, say); the rest stays in flight and is offered again at once, first;
* raise ``SinkError``: nothing of the batch is acknowledged; the engine retries the same
  batch later (``retriable`` and ``retry_after`` say when), never reordering the lane.

A sink that holds events open for a while (files assembled for minutes) may also define two
optional methods, called on the event loop:

* ``flush(partitions: list[int] | None) -> None``: hand over now what is held open for those
  partitions (None: all), e.g. close and upload the open files, so that their custody settles.
  Called when partitions are revoked (before the bounded wait for custody and the commit) and
  on shutdown once the lanes have sent their last events.
* ``forget(partitions: list[int]) -> None``: those partitions are no longer ours (revoked and
  committed, or lost): drop what is still open for them and write nothing more for them; the
  new owner reads those events again from the committed offset.

A sink that has built what it sends (a request body) may call ``Envelope.release()`` on the
events it took, so that their decoded form is freed while it is still in the CPU cache rather
than after the destination's round trip. The engine decodes released envelopes again before it
offers them to ``send`` again (a retry, or the rest after ``settled``); within one ``send`` a
sink that needs a released event again calls ``Envelope.restore()``.

A sink that reads nothing of an event but its JSON (``Envelope.json``) may set:

* ``json_only = True``: the engine may then decode records on worker processes
  (``engine.decode_processes``, see ``streams.engine.decoding``) and hand over envelopes
  whose JSON is already encoded and whose ``event`` is ``RELEASED``; a sink that needs an
  event all the same (the first one of a file, say) calls ``Envelope.restore()``. The engine
  does not restore such envelopes before offering them again either.

A sink that takes fewer events per send for some tenants than ``max_batch`` (a webhook
destination sending 1 or 100 events per request, say) may define:

* ``batch_limit(tenant_id: str) -> int``: the most events its next ``send`` for that tenant
  will settle. The engine decodes a lane's records only when it takes them into a batch, so
  offering what one send takes keeps decoded events few and freshly decoded. Called on the
  event loop each time a lane opens a batch: it must be cheap. Values are clamped to
  ``1..max_batch``; if it raises, ``max_batch`` is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from streams.event import AuditEvent, to_json_bytes

RELEASED = cast("AuditEvent", {})
"""What ``Envelope.event`` holds between ``release()`` and ``restore()``, and in the envelopes
of a ``json_only`` sink (empty: a sink that reads a released event without restoring it fails
loudly on the first key)."""


@dataclass(slots=True, eq=False)
class Envelope:
    """One decoded audit event and its position on the topic.

    ``decode`` (set by the engine) turns ``raw`` back into the event: with it, ``release()``
    frees the decoded event and ``restore()`` brings it back. Without it both do nothing.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    tenant_id: str
    event: AuditEvent
    size: int
    raw: bytes = field(repr=False)
    decode: Callable[[bytes], AuditEvent] | None = field(default=None, repr=False)
    _json: bytes | None = field(default=None, repr=False)

    @property
    def json(self) -> bytes:
        """The bytes customers receive (the spec's JSON), encoded once."""
        if self._json is None:
            event = self.event
            self._json = to_json_bytes(event if event is not RELEASED else self.restore())
        return self._json

    def release(self) -> None:
        """Free the decoded event now (``raw`` and the position stay: all the engine needs to
        settle or dead-letter this envelope). No-op without ``decode``."""
        if self.decode is not None:
            self.event = RELEASED

    def restore(self) -> AuditEvent:
        """The decoded event, decoded again from ``raw`` if it was released."""
        if self.event is RELEASED and self.decode is not None:
            self.event = self.decode(self.raw)
        return self.event


@dataclass(frozen=True)
class SendResult:
    """A sink's answer other than "all acknowledged" (see the module docstring)."""

    rejected: Mapping[int, str] = field(default_factory=dict)
    pending: asyncio.Future[None] | None = None
    settled: int | None = None
    """How many events from the start of the batch this answer covers (None: all)."""


class Sink(Protocol):
    """A delivery method (webhook, syslog, storage, index) as the engine drives it."""

    name: str
    """Short connector name, used in metrics labels and dead-letter headers."""

    max_batch: int
    """Most events the engine hands over in one ``send`` call."""

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        """Deliver ``batch`` (events of ``tenant_id``, in order) or raise ``SinkError``."""
        ...

    async def close(self) -> None:
        """Release connections; called once when the engine stops."""
        ...
