"""Per-partition bookkeeping of the engine: tenant lanes, the commit point and its metadata.

Pure logic (no Kafka, no asyncio I/O), so every rule here is unit-tested on its own.

A partition carries events of many tenants. Each tenant has a *lane*: its events in
partition order, queued, in flight at the sink, or in the sink's custody. A lane never
reorders; lanes never wait for each other. Queued records are kept as fetched (``Queued``:
the Avro bytes, a tenth of a decoded event's memory); a lane decodes them when it takes them
into a batch for the sink.

Terms used below, all Kafka offsets of one partition:

* ``read_pos``  the next offset the fetcher delivers (goes back when a lane re-reads);
* ``high``      the highest offset ever dispatched in this assignment;
* a lane's ``high_water``: every record of the tenant at or below it was taken (queued,
  sent, acknowledged or dead-lettered) — records at or below it are skipped on re-read;
* a lane's ``first_pending``: the lowest offset of the tenant not yet acknowledged.

The commit point C is the lowest offset not yet acknowledged in the whole partition, so a
commit never passes a failure. Everything in (C, P] except the lagging tenants listed in the
metadata is acknowledged; P is ``max(high, inherited P)``.

Commit metadata (Kafka stores up to 4096 bytes per partition by default)::

    se1|<P - C>|<tenant>=<L - C>,<tenant>=<L - C>,...

``L`` is the first offset of the tenant still to deliver. Tenant ids are tokens of
``[A-Za-z0-9][A-Za-z0-9_.:-]*`` (the event contract), so ``|``, ``=`` and ``,`` cannot occur
in them; ``~dlq`` stands for records still being dead-lettered. When the list does not fit,
the lanes with the lowest ``L`` are kept and P is lowered to just below the first lane left
out: the tenants after that point get duplicates after a restart, never a loss. Unreadable
metadata is ignored the same way (plain restart from C).
"""

from __future__ import annotations

import asyncio
from array import array
from collections import deque
from dataclasses import dataclass, field

from streams.engine.sink import Envelope

METADATA_VERSION = "se1"
_NEVER = 2**63  # above every Kafka offset
DLQ_LANE = "~dlq"

Queued = tuple[int, int, bytes, bytes | None]
"""A fetched record waiting in a lane, not decoded yet: ``(offset, timestamp_ms, value, key)``.
A plain tuple: one is built per record on the engine's hottest path."""


@dataclass(eq=False)
class Custody:
    """A batch the sink took into custody (see ``SendResult.pending``)."""

    first_offset: int
    last_offset: int
    timestamps: array[int]
    """Record timestamps (ms) of the events it acknowledges (for the latency metric): a
    storage file may hold 100,000 events for minutes, so the events themselves are not kept."""
    future: asyncio.Future[None]


@dataclass(eq=False)
class Lane:
    """The ordered events of one tenant inside one partition."""

    tenant_id: str
    high_water: int
    queue: deque[Queued] = field(default_factory=deque)
    in_flight: list[Envelope] = field(default_factory=list)
    custody: deque[Custody] = field(default_factory=deque)
    dead_lettering: set[int] = field(default_factory=set)
    parked_from: int | None = None
    unpark_requested: bool = False
    catching_up_until: int | None = None
    failures: int = 0
    failing_since: float | None = None
    retry_at: float = 0.0
    task: asyncio.Task[None] | None = None
    epoch: int = 0
    """Bumped when a batch in custody fails: a send begun before that is stale."""

    def first_pending(self) -> int | None:
        """Lowest offset of this tenant that is not acknowledged yet, if any."""
        candidates = [min(self.dead_lettering)] if self.dead_lettering else []
        if self.custody:
            candidates.append(self.custody[0].first_offset)
        if self.in_flight:
            candidates.append(self.in_flight[0].offset)
        if self.queue:
            candidates.append(self.queue[0][0])
        if self.parked_from is not None:
            candidates.append(self.parked_from)
        return min(candidates) if candidates else None

    @property
    def idle(self) -> bool:
        return (
            not self.queue
            and not self.in_flight
            and not self.custody
            and not self.dead_lettering
            and self.parked_from is None
            and self.catching_up_until is None
        )


def parse_metadata(text: str | None, committed: int) -> tuple[int, dict[str, int]] | None:
    """``(P, {tenant: L})`` from commit metadata, or None if absent or unreadable."""
    if not text:
        return None
    parts = text.split("|")
    if len(parts) != 3 or parts[0] != METADATA_VERSION:
        return None
    try:
        p = committed + int(parts[1])
        lagging: dict[str, int] = {}
        for item in filter(None, parts[2].split(",")):
            tenant, _, delta = item.rpartition("=")
            if not tenant:
                return None
            lagging[tenant] = committed + int(delta)
    except ValueError:
        return None
    if p < committed - 1 or any(not committed <= off <= p for off in lagging.values()):
        return None
    return p, lagging


def encode_metadata(committed: int, p: int, lagging: dict[str, int], limit: int) -> str:
    """Metadata for a commit at ``committed``, at most ``limit`` bytes (see module docstring)."""
    if p < committed:
        return ""
    items = sorted(lagging.items(), key=lambda kv: kv[1])
    text = f"{METADATA_VERSION}|{p - committed}|"
    used: list[str] = []
    for n, (tenant, offset) in enumerate(items):
        piece = f"{tenant}={offset - committed}"
        candidate = text + ",".join([*used, piece])
        if len(candidate.encode()) > limit:
            # Claim only up to just below the first lane that does not fit.
            p_cut = offset - 1
            head = f"{METADATA_VERSION}|{p_cut - committed}|"
            body = ",".join(f"{t}={o - committed}" for t, o in items[:n])
            if p_cut < committed or len((head + body).encode()) > limit:
                return ""
            return head + body
        used.append(piece)
    return text + ",".join(used)


class PartitionLanes:
    """Lanes, positions and the commit point of one assigned partition."""

    def __init__(self, topic: str, partition: int, committed: int, metadata: str | None) -> None:
        self.topic = topic
        self.partition = partition
        self.read_pos = committed
        self.high = committed - 1
        self.last_committed = committed
        self.last_metadata = ""
        self.inherited_p = committed - 1
        self.lanes: dict[str, Lane] = {}
        self.revoked = False
        self.rewind_to: int | None = None
        self._catch_up_next = _NEVER  # no lane catches up below this (its lowest end, or less)
        self.parked = 0
        """Lanes parked (``parked_from`` set): their next records are to be read again."""
        self.catching_up_lanes = 0
        """Lanes catching up (``catching_up_until`` set): re-read records are on their way."""
        parsed = parse_metadata(metadata, committed)
        if parsed is not None:
            self.inherited_p, lagging = parsed
            for tenant, offset in lagging.items():
                self.lanes[tenant] = Lane(
                    tenant, high_water=offset - 1, catching_up_until=self.inherited_p
                )
            self.catching_up_lanes = len(lagging)
            if lagging:
                self._catch_up_next = self.inherited_p

    def lane(self, tenant_id: str) -> Lane:
        lane = self.lanes.get(tenant_id)
        if lane is None:
            lane = self.lanes[tenant_id] = Lane(tenant_id, high_water=self.inherited_p)
        return lane

    def wants(self, tenant_id: str, offset: int) -> Lane | None:
        """The lane that must take this record, or None if it is done or parked."""
        lane = self.lane(tenant_id)
        if offset <= lane.high_water:
            return None
        if lane.parked_from is not None and offset >= lane.parked_from:
            return None
        return lane

    def advance(self, offset: int) -> None:
        """The fetcher delivered ``offset`` (taken or skipped)."""
        self.read_pos = offset + 1
        if offset > self.high:
            self.high = offset
        # Visiting every lane on every fetch would cost O(tenants): only once the read position
        # has passed the end of a catch-up. (``offset`` is the last of a run of records, so it
        # may lie well past that end.)
        if self.read_pos > self._catch_up_next:
            self._catch_up_next = _NEVER
            for lane in self.lanes.values():
                until = lane.catching_up_until
                if until is None:
                    continue
                if self.read_pos > until:
                    lane.catching_up_until = None
                    self.catching_up_lanes -= 1
                elif until < self._catch_up_next:
                    self._catch_up_next = until

    def catching_up(self) -> bool:
        return any(
            lane.catching_up_until is not None and self.read_pos <= lane.catching_up_until
            for lane in self.lanes.values()
        )

    def park(self, lane: Lane, from_offset: int) -> int:
        """Forget the lane's queued events from ``from_offset`` on; returns how many."""
        dropped = 0
        while lane.queue and lane.queue[-1][0] >= from_offset:
            lane.queue.pop()
            dropped += 1
        if lane.parked_from is None:
            self.parked += 1
            lane.parked_from = from_offset
        elif from_offset < lane.parked_from:
            lane.parked_from = from_offset
        # A re-read asked for earlier (``refill``) may start above what was just dropped: the
        # lane asks again, from its new park point, once it is drained.
        lane.unpark_requested = False
        return dropped

    def refill(self, lane: Lane, below: int) -> bool:
        """Ask early for the re-read of a lane that parked because it was full.

        A healthy parked lane (no failure since) with fewer than ``below`` events queued
        requests its re-read now, while it still has events to send, instead of once it is
        drained: otherwise it would stand idle for the seek and the fetch, or for as long as
        the process's buffer cap keeps fetching paused. Records re-read join its queue behind
        those it holds. True if it asked.
        """
        if lane.parked_from is None or lane.unpark_requested or lane.failures:
            return False
        if len(lane.queue) >= below:
            return False
        self.unpark(lane)
        return True

    def unpark(self, lane: Lane) -> None:
        """Let a parked lane take its events again: re-read them from Kafka.

        If its events were already read past, the lane stays parked until the fetcher has
        been moved back (``apply_rewind``): records fetched before the seek must not be
        taken, or the re-read would skip the ones in between.
        """
        start = lane.parked_from
        if start is None:
            return
        if start >= self.read_pos:
            self._release(lane, start)
            return
        lane.unpark_requested = True
        self.rewind_to = start if self.rewind_to is None else min(self.rewind_to, start)

    def _release(self, lane: Lane, start: int) -> None:
        lane.parked_from = None
        self.parked -= 1
        lane.unpark_requested = False
        lane.high_water = min(lane.high_water, start - 1)
        if start <= self.high:
            # Its records up to ``high`` were skipped while parked: it lags until re-read.
            if lane.catching_up_until is None:
                self.catching_up_lanes += 1
            lane.catching_up_until = max(lane.catching_up_until or -1, self.high)
            self._catch_up_next = min(self._catch_up_next, lane.catching_up_until)

    def apply_rewind(self) -> int | None:
        """The offset to seek to, if lanes asked to re-read; call right before seeking.

        Resets the read position and lets the waiting lanes take records again.
        """
        target = self.rewind_to
        self.rewind_to = None
        if target is None:
            return None
        self.read_pos = target
        for lane in self.lanes.values():
            if lane.unpark_requested and lane.parked_from is not None:
                self._release(lane, lane.parked_from)
        return target

    def commit_point(self) -> int:
        """Lowest offset not yet acknowledged: everything below it may be committed."""
        point = self.high + 1
        if self.catching_up():
            point = min(point, self.read_pos)
        if self.rewind_to is not None:
            point = min(point, self.read_pos, self.rewind_to)
        for lane in self.lanes.values():
            first = lane.first_pending()
            if first is not None and first < point:
                point = first
        return point

    def lagging(self, p: int, point: int) -> dict[str, int]:
        """Tenants with unacknowledged records in [point, p], and from which offset."""
        out: dict[str, int] = {}
        for tenant, lane in self.lanes.items():
            first = lane.first_pending()
            if lane.catching_up_until is not None:
                start = lane.high_water + 1
                first = start if first is None else min(first, start)
            if first is not None and first <= p:
                # Nothing below the commit point is pending; a catching-up lane's next
                # record is at or above it too.
                out[tenant] = max(first, point)
        return out

    def commit_offsets(self, limit: int) -> tuple[int, str]:
        """``(offset, metadata)`` to commit now."""
        point = self.commit_point()
        p = max(self.high, self.inherited_p)
        return point, encode_metadata(point, p, self.lagging(p, point), limit)

    def forget_idle(self) -> int:
        """Drop idle lanes that no re-read can reach (keeps memory flat with many tenants)."""
        floor = self.last_committed
        idle = [
            t
            for t, lane in self.lanes.items()
            if lane.idle and lane.task is None and lane.high_water < floor
        ]
        for tenant in idle:
            del self.lanes[tenant]
        return len(idle)
