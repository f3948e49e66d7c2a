"""Tenant lanes, the commit point and the commit metadata (``streams.engine.lanes``).

The tests drive ``PartitionLanes`` the way ``streams.engine.runner`` does, with a small
simulated partition instead of Kafka:

* ``Stream``: the records of one partition (offset -> tenant, ``None`` for an undecodable
  record that goes to the dead-letter topic);
* ``Ledger``: what the destination and the dead-letter topic durably hold, over every engine
  instance (restarts included), with the order each instance acknowledged in;
* ``Driver``: one engine instance on the partition: ``fetch`` is ``_dispatch`` (which
  advances once per run of a partition's records; nothing reads the position in between),
  ``send`` is one ``_drive``/``_send`` step (acknowledged, or failed as in ``_after_failure``),
  ``drive`` is the drained-parked-lane ``unpark``, ``refill`` the early one of a full lane
  that still has events (``PartitionLanes.refill``), ``flow_control`` is ``apply_rewind``,
  ``commit`` is ``_commit_all`` (and checks every commit against the ledger), ``restart``
  builds the next instance from the last commit.
"""

from __future__ import annotations

import asyncio
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from streams.engine.lanes import (
    DLQ_LANE,
    METADATA_VERSION,
    Custody,
    Lane,
    PartitionLanes,
    Queued,
    encode_metadata,
    parse_metadata,
)
from streams.engine.sink import Envelope
from streams.event import AuditEvent

pytestmark = pytest.mark.unit

TOPIC = "audit.events"
PARTITION = 7
BIG = 4096  # Kafka's default offset.metadata.max.bytes


# ---------------------------------------------------------------------------- simulation


def envelope(offset: int, tenant: str) -> Envelope:
    """An envelope with a dummy event (lanes never look inside it)."""
    event = cast(AuditEvent, {"event_id": f"evt-{offset}", "tenant_id": tenant})
    raw = f"{tenant}:{offset}".encode()
    return Envelope(TOPIC, PARTITION, offset, 1_700_000_000_000 + offset, tenant, event, 8, raw)


def queued(offset: int, tenant: str) -> Queued:
    """A record waiting in a lane, as the engine queues it (not decoded yet)."""
    raw = f"{tenant}:{offset}".encode()
    return (offset, 1_700_000_000_000 + offset, raw, tenant.encode())


def opened(record: Queued) -> Envelope:
    """What the engine makes of a queued record when a lane takes it into a batch."""
    offset, _, _, key = record
    assert key is not None
    return envelope(offset, key.decode())


@dataclass(frozen=True)
class Stream:
    """The records of one partition: ``tenants[i]`` is the tenant of offset ``base + i``."""

    base: int
    tenants: tuple[str | None, ...]

    @classmethod
    def of(cls, base: int, layout: str) -> Stream:
        """One character per record: a tenant id, or ``.`` for an undecodable record."""
        return cls(base, tuple(None if c == "." else c for c in layout))

    @property
    def end(self) -> int:
        return self.base + len(self.tenants)

    def tenant(self, offset: int) -> str | None:
        return self.tenants[offset - self.base]

    def lane_of(self, offset: int) -> str:
        """The lane that owns the record: its tenant, or the dead-letter pseudo-lane."""
        return self.tenant(offset) or DLQ_LANE

    def offsets(self, lane: str, start: int | None = None, stop: int | None = None) -> list[int]:
        lo = self.base if start is None else max(start, self.base)
        hi = self.end if stop is None else min(stop, self.end)
        return [o for o in range(lo, hi) if self.lane_of(o) == lane]


@dataclass
class Ledger:
    """Durable state outside the engine: acknowledged (or dead-lettered) records."""

    acked: dict[int, int] = field(default_factory=dict)
    order: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    protected: set[int] = field(default_factory=set)
    duplicates: list[int] = field(default_factory=list)
    unexpected_duplicates: list[int] = field(default_factory=list)
    _low: int = 0

    def ack(self, instance: int, lane: str, offset: int) -> None:
        if offset in self.acked:
            self.duplicates.append(offset)
            if offset in self.protected:
                self.unexpected_duplicates.append(offset)
        self.acked[offset] = self.acked.get(offset, 0) + 1
        self.order.setdefault((instance, lane), []).append(offset)

    def is_acked(self, offset: int) -> bool:
        return offset in self.acked

    def first_unacked(self, start: int) -> int:
        """The lowest offset from ``start`` on that is not acknowledged."""
        low = max(start, self._low)
        while low in self.acked:
            low += 1
        self._low = low
        return low

    def assert_in_order(self) -> None:
        """No instance delivered a tenant's record before an older one it had not delivered."""
        for (instance, lane), offsets in self.order.items():
            if lane == DLQ_LANE:  # dead letters are stored concurrently, in any order
                continue
            seen: set[int] = set()
            for offset in offsets:
                if offset not in seen:
                    assert not seen or offset > max(seen), (instance, lane, offsets)
                    seen.add(offset)


class LossError(AssertionError):
    """A record that was never acknowledged is skipped: nothing would deliver it."""


class MetadataError(AssertionError):
    """A commit claims a record is acknowledged that is not."""


def check_commit(stream: Stream, ledger: Ledger, point: int, metadata: str) -> None:
    """A commit at ``point`` with ``metadata`` must not claim anything not acknowledged."""
    first = ledger.first_unacked(stream.base)
    if point > first and first < stream.end:
        raise MetadataError(f"commit point {point} passes unacknowledged offset {first}")
    parsed = parse_metadata(metadata, point)
    if parsed is None:
        return  # a plain restart from the commit point claims nothing above it
    p, lagging = parsed
    for offset in range(max(point, stream.base), min(p + 1, stream.end)):
        lane = stream.lane_of(offset)
        since = lagging.get(lane)
        if (since is None or offset < since) and not ledger.is_acked(offset):
            raise MetadataError(
                f"metadata {metadata!r} at {point} claims offset {offset} ({lane}) is "
                f"acknowledged (P={p}, lagging={lagging})"
            )


class Driver:
    """One engine instance reading one partition, driven like ``runner.py`` drives lanes."""

    def __init__(
        self,
        stream: Stream,
        committed: int | None = None,
        metadata: str | None = None,
        *,
        ledger: Ledger | None = None,
        instance: int = 0,
        queue_cap: int = 1_000,
        park_after: int = 3,
        batch: int = 2,
        limit: int = BIG,
        auto_rewind: bool = True,
        check_metadata: bool = True,
        runner_park_point: bool = False,
    ) -> None:
        self.stream = stream
        self.ledger = ledger if ledger is not None else Ledger()
        self.instance = instance
        self.queue_cap = queue_cap
        self.park_after = park_after
        self.batch = batch
        self.limit = limit
        self.auto_rewind = auto_rewind
        self.check_metadata = check_metadata
        self.runner_park_point = runner_park_point
        start = stream.base if committed is None else committed
        self.part = PartitionLanes(TOPIC, PARTITION, start, metadata)
        self.part.last_metadata = metadata or ""
        self.taken: list[tuple[str, int]] = []
        self.skipped: list[int] = []
        self.unreadable_commits = 0

    # -- what the fetcher does (_dispatch) ------------------------------------------------------

    def fetch(self, count: int = 1) -> list[int]:
        """Deliver up to ``count`` records from ``read_pos``; returns the offsets taken."""
        taken: list[int] = []
        for _ in range(count):
            offset = self.part.read_pos
            if offset >= self.stream.end:
                break
            tenant = self.stream.tenant(offset)
            lane = self.part.wants(tenant or DLQ_LANE, offset)
            if lane is None:
                self.skipped.append(offset)
                self.check_skip(tenant or DLQ_LANE, offset)
            else:
                lane.high_water = offset
                if tenant is None:
                    lane.dead_lettering.add(offset)
                elif len(lane.queue) >= self.queue_cap:
                    self.part.park(lane, offset)
                else:
                    lane.queue.append(queued(offset, tenant))
                self.taken.append((lane.tenant_id, offset))
                taken.append(offset)
            self.part.advance(offset)
        return taken

    def check_skip(self, tenant: str, offset: int) -> None:
        """A record may be skipped only if delivered, still pending here, or parked."""
        if self.ledger.is_acked(offset):
            return
        lane = self.part.lanes[tenant]
        if lane.parked_from is not None and offset >= lane.parked_from:
            return  # read again after unpark
        pending = {q[0] for q in lane.queue} | {e.offset for e in lane.in_flight}
        for c in lane.custody:  # a batch in custody: the tenant's events in that range
            pending |= set(range(c.first_offset, c.last_offset + 1))
        pending |= lane.dead_lettering
        if offset not in pending:
            raise LossError(f"instance {self.instance} skipped unacknowledged {offset} ({tenant})")

    def fetch_all(self) -> list[int]:
        return self.fetch(self.stream.end - self.part.read_pos)

    # -- what a lane task does (_drive / _send / _after_failure) -------------------------

    def send(self, tenant: str, ok: bool = True) -> list[int]:
        """One send of the lane's batch; returns the offsets acknowledged."""
        lane = self.part.lanes[tenant]
        if not lane.in_flight:
            take = min(self.batch, len(lane.queue))
            lane.in_flight = [opened(lane.queue.popleft()) for _ in range(take)]
        if not lane.in_flight:
            return []
        if ok:
            batch, lane.in_flight, lane.failures = lane.in_flight, [], 0
            for env in batch:
                self.ledger.ack(self.instance, tenant, env.offset)
            return [env.offset for env in batch]
        lane.failures += 1
        if lane.failures >= self.park_after and (lane.queue or lane.parked_from is None):
            # What runner._after_failure does: during a re-read the read position can be at
            # or below the batch in flight; the lane's next record is above its high water.
            first = lane.queue[0][0] if lane.queue else max(self.part.read_pos, lane.high_water + 1)
            self.part.park(lane, first)
        return []

    def send_all(self, tenant: str) -> list[int]:
        lane = self.part.lanes[tenant]
        done: list[int] = []
        while lane.queue or lane.in_flight:
            done += self.send(tenant)
        return done

    def drive(self, tenant: str) -> bool:
        """A drained parked lane takes its events again; True if it unparked."""
        lane = self.part.lanes.get(tenant)
        if lane is None or lane.parked_from is None:
            return False
        if lane.queue or lane.in_flight or lane.custody:
            return False
        self.part.unpark(lane)
        if self.auto_rewind:
            self.flow_control()
        return True

    def refill(self, tenant: str) -> bool:
        """What ``_drive`` does after taking a batch: a full lane that parked asks for its
        re-read while it still holds fewer than half a queue; True if it asked."""
        lane = self.part.lanes.get(tenant)
        if lane is None or not self.part.refill(lane, max(1, self.queue_cap // 2)):
            return False
        if self.auto_rewind:
            self.flow_control()
        return True

    def store_dead_letter(self, offset: int) -> None:
        for lane in self.part.lanes.values():
            if offset in lane.dead_lettering:
                lane.dead_lettering.discard(offset)
                self.ledger.ack(self.instance, DLQ_LANE, offset)
                return
        raise AssertionError(f"offset {offset} is not being dead-lettered")

    def dead_lettering(self) -> list[int]:
        return sorted(o for lane in self.part.lanes.values() for o in lane.dead_lettering)

    # -- what the main loop does (_flow_control / _commit_all) ---------------------------

    def flow_control(self) -> int | None:
        return self.part.apply_rewind()

    def commit(self) -> tuple[int, str]:
        """Commit like ``_commit_all`` after checking the commit against the ledger."""
        point, metadata = self.part.commit_offsets(self.limit)
        assert point >= self.part.last_committed, (point, self.part.last_committed)
        if self.part.catching_up():  # a re-read holds the commit point at the reader
            assert point <= self.part.read_pos, (point, self.part.read_pos)
        if self.part.rewind_to is not None:
            assert point <= self.part.rewind_to, (point, self.part.rewind_to)
        assert len(metadata.encode()) <= self.limit, metadata
        if metadata and parse_metadata(metadata, point) is None:
            self.unreadable_commits += 1
        check_commit(self.stream, self.ledger, point, metadata if self.check_metadata else "")
        lanes = self.part.lanes.values()
        # The counts behind the lanes_rereading gauge match the lanes themselves.
        assert self.part.parked == sum(lane.parked_from is not None for lane in lanes)
        assert self.part.catching_up_lanes == sum(
            lane.catching_up_until is not None for lane in lanes
        )
        self.part.last_committed = point
        self.part.last_metadata = metadata
        self.part.forget_idle()
        return point, metadata

    def restart(self) -> Driver:
        """The next instance (crash or rebalance): starts from the last commit."""
        committed, metadata = self.part.last_committed, self.part.last_metadata
        self.ledger.protected = claimed(self.stream, committed, metadata)
        return Driver(
            self.stream,
            committed,
            metadata,
            ledger=self.ledger,
            instance=self.instance + 1,
            queue_cap=self.queue_cap,
            park_after=self.park_after,
            batch=self.batch,
            limit=self.limit,
            auto_rewind=self.auto_rewind,
            check_metadata=self.check_metadata,
            runner_park_point=self.runner_park_point,
        )

    # -- helpers ---------------------------------------------------------------------------

    def drain(self, rounds: int = 10_000) -> None:
        """Deliver everything that is left, with a healthy destination."""
        for _ in range(rounds):
            self.fetch_all()
            for tenant in list(self.part.lanes):
                if self.part.lanes[tenant].queue or self.part.lanes[tenant].in_flight:
                    self.send_all(tenant)
                self.drive(tenant)
            for offset in self.dead_lettering():
                self.store_dead_letter(offset)
            self.flow_control()
            if self.part.read_pos >= self.stream.end and not self.busy():
                return
        raise AssertionError("the partition did not drain")

    def busy(self) -> bool:
        return self.part.rewind_to is not None or any(
            lane.queue or lane.in_flight or lane.dead_lettering or lane.parked_from is not None
            for lane in self.part.lanes.values()
        )


def claimed(stream: Stream, committed: int, metadata: str) -> set[int]:
    """The records a commit says are acknowledged: a restart must never deliver them again.

    Everything below the commit point; with readable metadata also every record in (C, P]
    except those of a lagging tenant from its L on. (Records acknowledged after the commit, or
    above a truncated P, may legitimately come again: at-least-once.)
    """
    out = set(range(stream.base, min(committed, stream.end)))
    parsed = parse_metadata(metadata, committed)
    if parsed is not None:
        p, lagging = parsed
        for offset in range(max(committed, stream.base), min(p + 1, stream.end)):
            first = lagging.get(stream.lane_of(offset))
            if first is None or offset < first:
                out.add(offset)
    return out


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop to create futures with (custody) without running anything."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def custody(loop: asyncio.AbstractEventLoop, envs: list[Envelope]) -> Custody:
    stamps = array("q", [e.timestamp_ms for e in envs])
    return Custody(envs[0].offset, envs[-1].offset, stamps, loop.create_future())


# ---------------------------------------------------------------------------- 1. commit point


def test_fresh_partition_commits_where_it_started() -> None:
    part = PartitionLanes(TOPIC, PARTITION, 500, None)
    assert (part.read_pos, part.high, part.last_committed) == (500, 499, 500)
    assert part.commit_point() == 500
    assert part.commit_offsets(BIG) == (500, "")
    assert not part.catching_up()


def test_commit_point_is_the_lowest_unacknowledged_offset_across_lanes() -> None:
    drv = Driver(Stream.of(100, "ABCABCABC"))
    drv.fetch_all()
    assert drv.part.commit_point() == 100
    drv.send_all("B")
    drv.send_all("C")
    assert drv.part.commit_point() == 100  # A's 100 still queued
    drv.send("A")  # a batch of 2: 100, 103
    assert drv.part.commit_point() == 106
    drv.send("A")
    assert drv.part.commit_point() == drv.part.high + 1 == 109
    drv.commit()
    assert drv.part.last_committed == 109


def test_a_failing_lane_holds_the_commit_point_while_other_lanes_deliver() -> None:
    drv = Driver(Stream.of(100, "ABBBABBBAB"), park_after=1_000)
    drv.fetch(5)
    drv.send_all("B")
    assert drv.send("A", ok=False) == []
    point, metadata = drv.commit()
    assert point == 100
    assert parse_metadata(metadata, point) == (104, {"A": 100})
    for _ in range(20):  # A keeps failing, B keeps delivering: never past A's first event
        drv.fetch(1)
        drv.send_all("B")
        drv.send("A", ok=False)
        point, metadata = drv.commit()
        assert point == 100
        parsed = parse_metadata(metadata, point)
        assert parsed is not None and parsed[1] == {"A": 100}
    assert drv.part.read_pos == drv.stream.end
    assert all(drv.ledger.is_acked(o) for o in drv.stream.offsets("B"))
    drv.send("A")  # recovers: 100 and 104
    assert drv.commit() == (108, f"{METADATA_VERSION}|1|A=0")
    drv.send_all("A")
    assert drv.commit() == (110, "")


@pytest.mark.parametrize("where", ["queue", "in_flight", "custody", "dead_lettering", "parked"])
def test_each_kind_of_pending_event_holds_the_commit_point(
    where: str, loop: asyncio.AbstractEventLoop
) -> None:
    part = PartitionLanes(TOPIC, PARTITION, 10, None)
    for offset in range(10, 20):
        part.advance(offset)
    lane = part.lane("A")
    lane.high_water = 15
    envs = [envelope(14, "A"), envelope(15, "A")]
    if where == "queue":
        lane.queue.extend(queued(e.offset, "A") for e in envs)
    elif where == "in_flight":
        lane.in_flight = envs
    elif where == "custody":
        lane.custody.append(custody(loop, envs))
    elif where == "dead_lettering":
        lane.dead_lettering.update({15, 14})
    else:
        lane.parked_from = 14
    assert lane.first_pending() == 14
    assert not lane.idle
    assert part.commit_point() == 14
    assert part.commit_offsets(BIG) == (14, f"{METADATA_VERSION}|5|A=0")


def test_first_pending_is_the_oldest_of_custody_in_flight_and_queue(
    loop: asyncio.AbstractEventLoop,
) -> None:
    lane = Lane("A", high_water=30)
    assert lane.first_pending() is None and lane.idle
    lane.queue.extend([queued(25, "A"), queued(27, "A")])
    assert lane.first_pending() == 25
    lane.in_flight = [envelope(21, "A"), envelope(23, "A")]
    assert lane.first_pending() == 21
    lane.custody.append(custody(loop, [envelope(11, "A"), envelope(13, "A")]))
    lane.custody.append(custody(loop, [envelope(15, "A")]))
    assert lane.first_pending() == 11
    lane.dead_lettering.add(9)  # a rejected event below everything else
    assert lane.first_pending() == 9
    lane.dead_lettering = {17}
    assert lane.first_pending() == 11


def test_custody_holds_the_commit_point_until_acknowledged_in_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    drv = Driver(Stream.of(100, "AAAAB"))
    drv.fetch_all()
    drv.send_all("B")
    lane = drv.part.lanes["A"]
    first = custody(loop, [opened(lane.queue.popleft()), opened(lane.queue.popleft())])
    second = custody(loop, [opened(lane.queue.popleft()), opened(lane.queue.popleft())])
    lane.custody.extend([first, second])
    assert drv.part.commit_point() == 100
    lane.custody.popleft()  # the first batch is durable (_custody_done)
    assert drv.part.commit_point() == 102
    lane.custody.popleft()
    assert drv.part.commit_point() == 105


def test_the_commit_point_never_goes_backwards_nor_past_a_failure() -> None:
    rng = random.Random(7)
    layout = tuple(rng.choice("ABCD") for _ in range(200))
    drv = Driver(Stream(1_000, layout), park_after=2, queue_cap=5, check_metadata=False)
    while drv.part.read_pos < drv.stream.end or drv.busy():
        drv.fetch(rng.randint(0, 4))
        for tenant in list(drv.part.lanes):
            drv.send(tenant, ok=rng.random() < 0.6)
            drv.drive(tenant)
        before = drv.part.last_committed
        point, _ = drv.commit()  # checks: never past an unacknowledged record
        assert point >= before
    assert drv.commit()[0] == drv.stream.end
    assert drv.ledger.duplicates == []


# ---------------------------------------------------------------------------- 2. metadata


@pytest.mark.parametrize(
    ("committed", "p", "lagging"),
    [
        (0, 0, {}),
        (0, 10, {"acme": 0, "globex": 10}),
        (1_000_000, 1_000_250, {"t-1": 1_000_000, "t.2": 1_000_017, "u:3_x": 1_000_250}),
        (42, 41, {}),
        (7, 7, {DLQ_LANE: 7}),
        (2**40, 2**40 + 99, {"Zeta9": 2**40 + 3, DLQ_LANE: 2**40 + 50}),
    ],
)
def test_metadata_round_trip(committed: int, p: int, lagging: dict[str, int]) -> None:
    text = encode_metadata(committed, p, lagging, BIG)
    if p < committed:
        assert text == ""
        assert parse_metadata(text, committed) is None
        return
    assert text.startswith(f"{METADATA_VERSION}|{p - committed}|")
    assert parse_metadata(text, committed) == (p, lagging)


def test_metadata_lists_lagging_tenants_by_lowest_offset_first() -> None:
    text = encode_metadata(100, 120, {"b": 115, "a": 103, DLQ_LANE: 101}, BIG)
    assert text == f"{METADATA_VERSION}|20|~dlq=1,a=3,b=15"


def test_restart_skips_acknowledged_records_and_replays_lagging_tenants() -> None:
    stream = Stream.of(100, "ABCDABCDABCDABCD" + "ABCD")
    drv = Driver(stream, park_after=1_000)
    drv.fetch(16)  # 100..115
    drv.send_all("A")
    drv.send("B")  # 101, 105 acknowledged; 109 fails from here on
    drv.send("B", ok=False)
    drv.send_all("C")
    drv.send("D", ok=False)  # D never delivers anything
    point, metadata = drv.commit()
    assert point == 103
    assert parse_metadata(metadata, point) == (115, {"D": 103, "B": 109})

    nxt = drv.restart()
    assert nxt.part.read_pos == 103 and nxt.part.inherited_p == 115
    assert nxt.part.catching_up()
    nxt.fetch_all()
    # Healthy tenants: nothing at or below P again; lagging ones: exactly what was pending.
    assert [o for lane, o in nxt.taken if lane == "A"] == [116]
    assert [o for lane, o in nxt.taken if lane == "C"] == [118]
    assert [o for lane, o in nxt.taken if lane == "B"] == [109, 113, 117]
    assert [o for lane, o in nxt.taken if lane == "D"] == [103, 107, 111, 115, 119]
    assert nxt.skipped == [
        o
        for o in range(103, 116)
        if stream.lane_of(o) in "AC" or o == 105  # B's 105 was done
    ]
    assert not nxt.part.catching_up()
    nxt.drain()
    assert nxt.commit() == (stream.end, "")
    assert nxt.ledger.duplicates == []
    assert set(nxt.ledger.acked) == set(range(100, stream.end))
    nxt.ledger.assert_in_order()


def test_while_catching_up_after_a_restart_the_commit_point_follows_the_reader() -> None:
    stream = Stream.of(100, "ABABABABAB")
    drv = Driver(stream, park_after=1_000, batch=1)
    drv.fetch_all()
    drv.send("A", ok=False)
    drv.send_all("B")
    point, metadata = drv.commit()
    assert (point, metadata) == (100, f"{METADATA_VERSION}|9|A=0")
    nxt = drv.restart()
    assert nxt.part.commit_point() == 100
    nxt.fetch(1)  # A's 100 taken again
    assert nxt.part.commit_point() == 100
    nxt.send("A")
    assert nxt.part.commit_point() == nxt.part.read_pos == 101  # not P + 1: A still behind
    nxt.fetch(3)
    assert nxt.part.commit_point() == 102  # A's 102 queued
    nxt.drain()
    assert nxt.commit() == (110, "")
    assert nxt.ledger.duplicates == []


def test_a_restart_before_anything_is_read_commits_the_same_again() -> None:
    drv = Driver(Stream.of(100, "ABCABC"), park_after=1_000)
    drv.fetch_all()
    drv.send("A", ok=False)
    drv.send_all("C")
    first = drv.commit()
    nxt = drv.restart()
    assert nxt.part.commit_offsets(BIG) == first


def test_unknown_tenants_after_a_restart_start_above_the_inherited_p() -> None:
    part = PartitionLanes(TOPIC, PARTITION, 100, f"{METADATA_VERSION}|9|A=2")
    assert part.lanes["A"].high_water == 101
    assert part.lanes["A"].catching_up_until == 109
    assert part.lane("new").high_water == 109
    assert part.wants("new", 105) is None
    assert part.wants("new", 110) is part.lanes["new"]
    assert part.wants("A", 101) is None
    assert part.wants("A", 102) is part.lanes["A"]


def test_a_catch_up_ends_when_one_run_of_records_reads_past_it() -> None:
    # The fetcher advances once per run of records; a run may go from inside a lane's catch-up
    # to well past its end. The lane must stop catching up then, not stay so for good (it
    # would never be idle again, and the lanes_rereading gauge would never come back to 0).
    part = PartitionLanes(TOPIC, PARTITION, 100, f"{METADATA_VERSION}|9|A=2")
    lane = part.lanes["A"]
    assert (lane.catching_up_until, part.catching_up_lanes) == (109, 1)
    part.advance(105)
    assert (lane.catching_up_until, part.catching_up_lanes) == (109, 1)
    part.advance(150)  # 106..150 in one run
    assert (lane.catching_up_until, part.catching_up_lanes) == (None, 0)
    assert lane.idle and not part.catching_up()
    # A re-read after a park catches up to what had been read: same again, one run past it.
    part.park(lane, 120)
    part.unpark(lane)
    assert part.apply_rewind() == 120 and lane.catching_up_until == 150
    assert (part.parked, part.catching_up_lanes) == (0, 1)
    part.advance(400)
    assert (lane.catching_up_until, part.catching_up_lanes) == (None, 0)


@dataclass
class Outcome:
    restarts: int = 0
    commits: int = 0
    unreadable: int = 0
    duplicates: int = 0


def simulate(
    seed: int,
    *,
    park: bool,
    restarts: bool,
    limit: int = BIG,
    auto_rewind: bool = False,
    check_metadata: bool = True,
    runner_park_point: bool = False,
    early_refill: bool = False,
    ticks: int = 200,
) -> Outcome:
    """A random partition and a random destination, driven in the runner's order.

    Every commit is checked against the ledger (never past an unacknowledged record; with
    ``check_metadata``, the metadata claims nothing unacknowledged either), every skipped record
    is checked (acknowledged, pending or parked), and at the end, after a healthy drain: every
    record delivered, in order per tenant and instance, and no record a commit claimed was
    delivered again after a restart.
    """
    rng = random.Random(seed)
    tenants = "ABCDEFGH"[: rng.randint(2, 8)]
    layout = "".join(
        "." if rng.random() < 0.05 else rng.choice(tenants) for _ in range(rng.randint(20, 120))
    )
    stream = Stream.of(rng.choice([1, 57, 10_000]), layout)
    fail_rate = {t: rng.choice([0.0, 0.1, 0.4, 0.8]) for t in tenants}
    drv = Driver(
        stream,
        # (8: an early re-read can be asked for while more than a batch is still queued)
        queue_cap=rng.choice([2, 4, 8, 1_000] if early_refill else [2, 4, 1_000])
        if park
        else 1_000_000,
        park_after=rng.choice([1, 2, 3]) if park else 1_000_000,
        batch=rng.choice([1, 2, 3]),
        limit=limit,
        auto_rewind=auto_rewind,
        check_metadata=check_metadata,
        runner_park_point=runner_park_point,
    )
    out = Outcome()
    for _ in range(ticks):
        # Lane tasks and dead-letter callbacks run while the main loop waits for Kafka ...
        for tenant in list(drv.part.lanes):
            if tenant != DLQ_LANE and rng.random() < 0.5:
                drv.send(tenant, ok=rng.random() >= fail_rate[tenant])
                if early_refill:
                    drv.refill(tenant)
                    if rng.random() < 0.5:  # a lane may send again before the next fetch
                        drv.send(tenant, ok=rng.random() >= fail_rate[tenant])
            if rng.random() < 0.5:
                drv.drive(tenant)
        for offset in drv.dead_lettering():
            if rng.random() < 0.3:
                drv.store_dead_letter(offset)
        # ... then the fetched records are dispatched, then flow control, now and then a commit.
        drv.fetch(rng.randint(0, 5))
        drv.flow_control()
        if rng.random() < 0.3:
            drv.commit()
            out.commits += 1
        if drv.part.read_pos >= stream.end and not drv.busy():
            break
        if restarts and rng.random() < 0.04:
            out.unreadable += drv.unreadable_commits
            drv = drv.restart()
            out.restarts += 1
    drv.drain()
    assert drv.commit() == (stream.end, "")
    out.unreadable += drv.unreadable_commits
    missing = sorted(set(range(stream.base, stream.end)) - set(drv.ledger.acked))
    assert missing == [], f"seed {seed}: records lost"
    assert drv.ledger.unexpected_duplicates == [], f"seed {seed}: claimed records re-delivered"
    drv.ledger.assert_in_order()
    out.duplicates = len(drv.ledger.duplicates)
    return out


SEEDS = range(300)
FEWER_SEEDS = range(120)


def test_property_restarts_lose_nothing_and_never_redeliver_claimed_records() -> None:
    """Random ack/fail/dead-letter patterns and random restarts (no parking)."""
    total = Outcome()
    for seed in SEEDS:
        out = simulate(seed, park=False, restarts=True)
        total.restarts += out.restarts
        total.commits += out.commits
    assert total.restarts > 500 and total.commits > 5_000  # the property was exercised


@pytest.mark.parametrize("early_refill", [False, True], ids=["drained", "early-refill"])
@pytest.mark.parametrize("auto_rewind", [False, True], ids=["runner-order", "immediate-seek"])
def test_property_parking_never_passes_a_failure_nor_duplicates(
    auto_rewind: bool, early_refill: bool
) -> None:
    """Random parking (full queues, repeated failures) and re-reads, no restarts."""
    for seed in FEWER_SEEDS:
        out = simulate(
            seed,
            park=True,
            restarts=False,
            auto_rewind=auto_rewind,
            check_metadata=False,
            early_refill=early_refill,
        )
        assert out.duplicates == 0, seed


# ---------------------------------------------------------------------------- 3. size limit


def test_truncated_metadata_fits_keeps_the_lowest_offsets_and_lowers_p() -> None:
    committed, p = 5_000, 7_000
    lagging = {f"tenant-{n:03d}": committed + 3 * n + 1 for n in range(300)}
    ordered = sorted(lagging.items(), key=lambda kv: kv[1])
    for limit in (12, 13, 40, 64, 100, 257, 1_000, 4_096):
        text = encode_metadata(committed, p, lagging, limit)
        assert len(text.encode()) <= limit
        parsed = parse_metadata(text, committed)
        assert parsed is not None, (limit, text)
        new_p, kept = parsed
        assert len(kept) < len(lagging)
        assert list(kept.items()) == ordered[: len(kept)]  # the lowest offsets
        assert new_p == ordered[len(kept)][1] - 1  # just below the first lane left out
        # The first lane left out did not fit (measured with the header it was tried with).
        body = text.split("|")[2]
        tenant, offset = ordered[len(kept)]
        piece = f"{tenant}={offset - committed}"
        tried = f"{METADATA_VERSION}|{p - committed}|" + (f"{body},{piece}" if body else piece)
        assert len(tried.encode()) > limit


def test_truncation_counts_bytes_not_characters() -> None:
    lagging = {"ééééé": 3, "b": 4}  # not a valid tenant id, but the limit is in bytes
    text = encode_metadata(0, 9, lagging, 18)  # 4 more characters would fit, not 4 bytes
    assert text == f"{METADATA_VERSION}|3|ééééé=3"
    assert len(text.encode()) == 18
    text = encode_metadata(0, 9, lagging, 17)
    assert text == f"{METADATA_VERSION}|2|"
    assert parse_metadata(text, 0) == (2, {})


def test_metadata_that_cannot_hold_anything_is_left_out() -> None:
    # The first lagging tenant sits at the commit point: lowering P below it is impossible.
    assert encode_metadata(100, 200, {"A": 100, "B": 150}, 10) == ""
    # Nothing above the commit point: no metadata at all.
    assert encode_metadata(100, 99, {}, BIG) == ""
    # The header alone always fits the smallest configurable limit (64 bytes).
    assert len(encode_metadata(0, 2**63 - 1, {}, 64)) <= 64


def test_a_restart_from_truncated_metadata_only_duplicates() -> None:
    tenants = [f"t{n:02d}" for n in range(30)]
    rng = random.Random(3)
    stream = Stream(1_000, tuple(rng.choice(tenants) for _ in range(300)))
    drv = Driver(stream, park_after=10**6, batch=1, limit=60)
    drv.fetch_all()
    for n, tenant in enumerate(tenants):  # a random prefix delivered, then failing
        lane = drv.part.lanes[tenant]
        keep = len(lane.queue) if n < 10 else rng.randint(0, len(lane.queue) - 1)
        for _ in range(keep):
            drv.send(tenant)
        drv.send(tenant, ok=False)
    point, metadata = drv.commit()
    assert len(metadata.encode()) <= 60
    parsed = parse_metadata(metadata, point)
    assert parsed is not None
    p, kept = parsed
    everyone = drv.part.lagging(drv.part.high, point)
    assert 0 < len(kept) < len(everyone)  # truncated
    assert p < drv.part.high
    acked_before = set(drv.ledger.acked)

    nxt = drv.restart()
    nxt.drain()
    assert set(nxt.ledger.acked) == set(range(stream.base, stream.end))  # nothing lost
    assert nxt.ledger.unexpected_duplicates == []
    redelivered = set(nxt.ledger.duplicates)
    assert redelivered, "the tail above the lowered P is delivered again"
    assert all(o > p for o in redelivered)  # at or below P: never twice
    assert redelivered <= acked_before
    nxt.ledger.assert_in_order()


@pytest.mark.parametrize("limit", [16, 24, 40, 64])
def test_property_restarts_with_a_small_limit_lose_nothing(limit: int) -> None:
    duplicates = 0
    for seed in range(40):
        duplicates += simulate(seed, park=False, restarts=True, limit=limit).duplicates
    assert duplicates > 0  # truncation happened, and only ever cost duplicates


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "hello",
        "se1",
        "se1|",
        "se1|1",
        "se1|1|A=0|",
        "se0|1|A=0",
        "se2|1|A=0",
        "SE1|1|A=0",
        "se1||",
        "se1|x|",
        "se1|1.5|",
        "se1|-2|",
        "se1|-5|A=0",
        "se1|3|A=4",
        "se1|3|A=-1",
        "se1|3|A=x",
        "se1|3|A",
        "se1|3|=1",
        "se1|3|A=1=",
        "se1|3|A=1,B",
        "se1|3|A=99999999999999999999999",
        "se1|3|A=1.0",
        "{'offset': 5}",
    ],
)
def test_unreadable_or_foreign_metadata_is_ignored(text: str | None) -> None:
    assert parse_metadata(text, 100) is None
    part = PartitionLanes(TOPIC, PARTITION, 100, text)
    assert part.lanes == {} and part.inherited_p == 99
    assert part.wants("A", 100) is part.lanes["A"]  # a plain restart from the commit point


def test_tolerated_metadata_shapes() -> None:
    assert parse_metadata("se1|0|", 100) == (100, {})
    assert parse_metadata("se1|-1|", 100) == (99, {})
    assert parse_metadata("se1|3|A=1,,B=3,", 100) == (103, {"A": 101, "B": 103})


# ---------------------------------------------------------------------------- 4. parking


def test_park_drops_queued_events_from_the_offset_and_skips_the_tenant() -> None:
    drv = Driver(Stream.of(100, "ABABABABABAB"))
    drv.fetch(8)  # A: 100 102 104 106; B: 101 103 105 107
    lane = drv.part.lanes["A"]
    assert drv.part.park(lane, 104) == 2
    assert [q[0] for q in lane.queue] == [100, 102]
    assert lane.parked_from == 104
    assert drv.part.park(lane, 106) == 0  # parking higher keeps the lower point
    assert lane.parked_from == 104
    assert drv.fetch(4) == [109, 111]  # A's 108 and 110 are left in Kafka
    assert drv.part.wants("A", 112) is None
    assert drv.part.commit_point() == 100
    drv.send_all("A")
    drv.send_all("B")
    assert lane.first_pending() == 104
    point, metadata = drv.commit()
    assert point == 104
    assert parse_metadata(metadata, point) == (111, {"A": 104})


def test_park_below_the_parked_point_lowers_it() -> None:
    drv = Driver(Stream.of(100, "AAAAAA"))
    drv.fetch_all()
    lane = drv.part.lanes["A"]
    drv.part.park(lane, 104)
    assert drv.part.park(lane, 101) == 3
    assert lane.parked_from == 101
    assert [q[0] for q in lane.queue] == [100]


def test_unpark_requests_a_rewind_and_the_reread_takes_only_the_parked_tenant() -> None:
    stream = Stream.of(100, "ABCABCABCABC" + "ABC")
    drv = Driver(stream, auto_rewind=False)
    drv.fetch(12)
    lane = drv.part.lanes["A"]
    assert drv.part.park(lane, 103) == 3
    drv.send_all("B")
    drv.send_all("C")
    drv.send_all("A")  # 100 only
    assert drv.part.commit_point() == 103
    assert drv.drive("A")
    assert drv.part.rewind_to == 103
    # Records fetched before the seek (runner: the batch _consume returned) are not taken.
    assert drv.fetch(1) == []  # A's 112
    assert drv.part.commit_point() == 103
    assert drv.flow_control() == 103
    assert drv.part.read_pos == 103 and drv.part.rewind_to is None
    assert lane.parked_from is None and lane.high_water == 102
    assert drv.flow_control() is None
    assert drv.part.read_pos == 103

    drv.taken.clear()
    drv.skipped.clear()
    old_high = drv.part.high
    assert old_high == 112
    while drv.part.read_pos <= old_high:  # the re-read
        assert drv.part.catching_up()
        drv.fetch(1)
        assert drv.part.commit_point() <= drv.part.read_pos
        drv.commit()
        drv.send_all("A")
        if drv.part.read_pos <= old_high:  # nothing pending, yet held at the reader
            assert drv.part.commit_point() == drv.part.read_pos
    assert drv.taken == [("A", 103), ("A", 106), ("A", 109), ("A", 112)]
    assert drv.skipped == [o for o in range(103, 113) if stream.lane_of(o) != "A"]
    # Past the old high: normal behaviour again.
    assert not drv.part.catching_up() and lane.catching_up_until is None
    assert drv.part.commit_point() == 113
    assert drv.fetch(2) == [113, 114]
    assert drv.part.commit_point() == 113
    drv.drain()
    assert drv.commit() == (115, "")
    assert drv.ledger.duplicates == []
    drv.ledger.assert_in_order()


def test_a_pending_rewind_to_offset_zero_holds_the_commit_point() -> None:
    drv = Driver(Stream.of(0, "ABB"), auto_rewind=False)
    drv.fetch_all()
    drv.part.park(drv.part.lanes["A"], 0)
    drv.send_all("B")
    assert drv.part.commit_point() == 0
    assert drv.drive("A")
    assert drv.part.rewind_to == 0
    assert drv.part.commit_offsets(BIG)[0] == 0
    assert drv.flow_control() == 0
    assert drv.part.commit_offsets(BIG)[0] == 0
    drv.drain()
    assert drv.commit() == (3, "")


def test_unpark_of_a_lane_parked_at_the_read_position_needs_no_rewind() -> None:
    drv = Driver(Stream.of(100, "ABAB"), park_after=1)
    drv.fetch(2)
    drv.send("A", ok=False)  # queue empty: parked from the read position
    lane = drv.part.lanes["A"]
    assert lane.parked_from == 102
    assert drv.part.commit_point() == 100
    drv.send("A")
    assert drv.part.commit_point() == 101
    assert drv.drive("A")
    assert drv.part.rewind_to is None and lane.catching_up_until is None
    assert lane.parked_from is None
    assert drv.fetch_all() == [102, 103]


def test_unpark_without_park_and_apply_rewind_without_request_do_nothing() -> None:
    part = PartitionLanes(TOPIC, PARTITION, 100, None)
    lane = part.lane("A")
    part.unpark(lane)
    assert part.rewind_to is None and part.apply_rewind() is None
    assert part.read_pos == 100


def test_several_unparks_rewind_to_the_lowest() -> None:
    drv = Driver(Stream.of(100, "ABCABCABC"), auto_rewind=False)
    drv.fetch_all()
    for tenant, start in (("B", 104), ("A", 103), ("C", 108)):
        drv.part.park(drv.part.lanes[tenant], start)
        drv.send_all(tenant)
        assert drv.drive(tenant)
    assert drv.flow_control() == 103
    drv.taken.clear()
    drv.fetch_all()
    assert drv.taken == [("A", 103), ("B", 104), ("A", 106), ("B", 107), ("C", 108)]


def test_records_dispatched_between_unpark_and_rewind_do_not_skip_the_parked_ones() -> None:
    stream = Stream.of(100, "AB" * 8)
    drv = Driver(stream, auto_rewind=False)
    drv.fetch(10)
    drv.part.park(drv.part.lanes["A"], 102)
    drv.send_all("A")  # 100
    drv.send_all("B")
    assert drv.drive("A")  # unparked while _consume runs; rewind to 102 requested
    assert drv.fetch(2) == [111]  # the batch _consume returned: A's 110 is not taken
    assert drv.flow_control() == 102
    drv.taken.clear()
    drv.fetch_all()
    assert [o for t, o in drv.taken if t == "A"] == [102, 104, 106, 108, 110, 112, 114]
    drv.drain()
    assert drv.ledger.duplicates == []
    drv.ledger.assert_in_order()


def test_a_full_lane_parks_and_reads_its_events_again() -> None:
    drv = Driver(Stream.of(100, "A" * 10 + "B"), queue_cap=3)
    drv.fetch_all()
    lane = drv.part.lanes["A"]
    assert [q[0] for q in lane.queue] == [100, 101, 102]
    assert lane.parked_from == 103
    drv.drain()
    assert drv.commit() == (111, "")
    assert drv.ledger.order[(0, "A")] == list(range(100, 110))
    assert drv.ledger.duplicates == []


def test_a_full_lane_asks_for_its_reread_before_it_runs_dry() -> None:
    drv = Driver(Stream.of(100, "AB" * 6), queue_cap=4, batch=1, auto_rewind=False)
    drv.fetch_all()  # A: 100 102 104 106 queued, parked from 108
    lane = drv.part.lanes["A"]
    assert lane.parked_from == 108
    drv.send("A")
    assert not drv.refill("A")  # three left: not below half of the queue
    drv.send("A")
    assert not drv.refill("A")  # two left: not below half yet
    drv.send("A")
    assert drv.refill("A")  # one left: re-read now
    assert not drv.refill("A")  # asked once
    assert lane.unpark_requested and drv.part.rewind_to == 108
    assert [q[0] for q in lane.queue] == [106]  # still has events meanwhile
    assert drv.flow_control() == 108
    drv.fetch_all()
    # The re-read joins the queue behind what the lane held: in order, nothing twice.
    assert [q[0] for q in lane.queue] == [106, 108, 110]
    drv.drain()
    assert drv.ledger.order[(0, "A")] == list(range(100, 112, 2))
    assert drv.ledger.duplicates == []


def test_a_failing_lane_does_not_ask_early() -> None:
    drv = Driver(Stream.of(100, "A" * 6), queue_cap=4, batch=3, park_after=5)
    drv.fetch_all()  # 100-103 queued, parked from 104
    drv.send("A", ok=False)  # 100-102 in flight, failing; one queued
    assert not drv.refill("A")
    drv.send("A")  # delivered: healthy again
    assert drv.refill("A")


def test_a_failure_park_cancels_an_early_reread_that_would_start_too_high() -> None:
    # A asked to re-read from 104, then a failure parks it lower (at 102, dropping 102 and
    # 103 from its queue): the pending re-read from 104 must not release it, or 102 and 103
    # would never be read again.
    drv = Driver(Stream.of(100, "A" * 8), queue_cap=4, batch=1, park_after=1, auto_rewind=False)
    drv.fetch_all()  # 100-103 queued, parked from 104
    lane = drv.part.lanes["A"]
    drv.send("A")  # 100
    assert drv.part.refill(lane, 4)
    assert drv.send("A", ok=False) == []  # 101 fails: parked from 102, queue dropped
    assert lane.parked_from == 102
    assert not lane.unpark_requested
    assert drv.flow_control() == 104  # the seek asked for still happens ...
    assert lane.parked_from == 102  # ... but the lane waits for its own, lower one
    drv.drain()
    assert drv.ledger.order[(0, "A")] == list(range(100, 108))
    assert drv.ledger.duplicates == []


# ---------------------------------------------------------------------------- 5. forget_idle


def test_forget_idle_drops_only_idle_lanes_below_the_last_commit(
    loop: asyncio.AbstractEventLoop,
) -> None:
    part = PartitionLanes(TOPIC, PARTITION, 50, None)
    for offset in range(50, 100):
        part.advance(offset)
    part.last_committed = 80

    def make(name: str, high_water: int) -> Lane:
        lane = part.lane(name)
        lane.high_water = high_water
        return lane

    make("idle-below", 79)
    make("idle-at", 80)
    make("idle-above", 95)
    make("queued", 60).queue.append(queued(60, "queued"))
    make("in-flight", 61).in_flight = [envelope(61, "in-flight")]
    make("custody", 62).custody.append(custody(loop, [envelope(62, "custody")]))
    make("dead-lettering", 63).dead_lettering.add(63)
    make("parked", 64).parked_from = 64
    make("catching-up", 65).catching_up_until = 99
    task = loop.create_task(asyncio.sleep(0))
    loop.run_until_complete(task)
    make("with-task", 66).task = task

    assert part.forget_idle() == 1
    assert set(part.lanes) == {
        "idle-at",
        "idle-above",
        "queued",
        "in-flight",
        "custody",
        "dead-lettering",
        "parked",
        "catching-up",
        "with-task",
    }
    assert part.forget_idle() == 0


def test_a_forgotten_tenant_is_never_redelivered_by_a_later_rewind() -> None:
    stream = Stream.of(100, "XXAYAYAYAYXAYAY")
    drv = Driver(stream, auto_rewind=False)
    drv.fetch(2)
    drv.send_all("X")
    assert drv.commit()[0] == 102
    assert "X" not in drv.part.lanes  # idle, below the commit: forgotten
    drv.fetch(9)  # 102..110: X's 110 makes a fresh lane
    assert drv.part.lanes["X"].high_water == 110
    drv.send_all("X")
    drv.send_all("Y")
    drv.part.park(drv.part.lanes["A"], 102)
    assert drv.drive("A")
    assert drv.flow_control() == 102
    drv.taken.clear()
    drv.fetch_all()
    assert [o for t, o in drv.taken if t == "X"] == []
    assert [o for t, o in drv.taken if t == "A"] == stream.offsets("A")
    drv.drain()
    assert drv.commit() == (115, "")
    assert drv.ledger.duplicates == []


def test_forget_idle_keeps_inherited_lanes_until_the_commit_passes_p() -> None:
    drv = Driver(Stream.of(100, "ABABABABAB"), park_after=10**6)
    drv.fetch_all()
    drv.send_all("B")
    drv.send("A", ok=False)
    drv.commit()
    nxt = drv.restart()
    nxt.fetch(4)
    assert nxt.part.lanes["B"].high_water == 109
    assert nxt.part.forget_idle() == 0
    assert set(nxt.part.lanes) == {"A", "B"}
    nxt.drain()
    nxt.commit()
    assert nxt.part.lanes == {}
    assert nxt.ledger.duplicates == []


# ---------------------------------------------------------------------------- 6. dead letters


def test_the_dead_letter_lane_holds_the_commit_point_until_stored() -> None:
    drv = Driver(Stream.of(100, "AB.A.B"))
    drv.fetch_all()
    drv.send_all("A")
    drv.send_all("B")
    dlq = drv.part.lanes[DLQ_LANE]
    assert dlq.dead_lettering == {102, 104} and dlq.high_water == 104
    point, metadata = drv.commit()
    assert point == 102
    assert parse_metadata(metadata, point) == (105, {DLQ_LANE: 102})
    drv.store_dead_letter(104)  # stored out of order: still held by 102
    assert drv.commit()[0] == 102
    drv.store_dead_letter(102)
    assert drv.commit() == (106, "")
    assert DLQ_LANE not in drv.part.lanes  # idle and below the commit: forgotten


def test_a_rejected_event_of_a_tenant_lane_holds_the_commit_point() -> None:
    drv = Driver(Stream.of(100, "AAAB"), batch=1)
    drv.fetch_all()
    lane = drv.part.lanes["A"]
    drv.send("A")  # 100
    lane.queue.popleft()  # 101 rejected by the sink: being dead-lettered
    lane.dead_lettering.add(101)
    drv.send_all("A")  # 102
    drv.send_all("B")
    point, metadata = drv.commit()
    assert point == 101
    assert parse_metadata(metadata, point) == (103, {"A": 101})
    lane.dead_lettering.discard(101)
    drv.ledger.ack(0, DLQ_LANE, 101)
    assert drv.commit() == (104, "")


def test_a_restart_dead_letters_again_only_from_the_first_unstored_record() -> None:
    drv = Driver(Stream.of(100, ".A.A.A"))
    drv.fetch_all()
    drv.send_all("A")
    drv.store_dead_letter(100)
    point, metadata = drv.commit()
    assert (point, metadata) == (102, f"{METADATA_VERSION}|3|~dlq=0")
    nxt = drv.restart()
    nxt.fetch_all()
    assert nxt.taken == [(DLQ_LANE, 102), (DLQ_LANE, 104)]
    nxt.drain()
    assert nxt.commit() == (106, "")
    assert nxt.ledger.duplicates == []


# ---------------------------------------------------------------------------- regressions


def test_a_custody_failure_below_an_in_flight_batch_holds_the_commit_point(
    loop: asyncio.AbstractEventLoop,
) -> None:
    drv = Driver(Stream.of(100, "AAAAB"))
    drv.fetch_all()
    drv.send_all("B")
    lane = drv.part.lanes["A"]
    held = custody(loop, [opened(lane.queue.popleft()), opened(lane.queue.popleft())])  # 100, 101
    lane.custody.append(held)
    lane.in_flight = [
        opened(lane.queue.popleft()),
        opened(lane.queue.popleft()),
    ]  # 102, 103 being sent
    # runner._custody_done when the custody batch fails while the next batch is in flight:
    lane.custody.clear()
    lane.queue.clear()
    lane.parked_from = held.first_offset
    lane.high_water = held.first_offset - 1
    assert (
        drv.part.commit_point() == 100
    )  # regression (once): 102, past the unacknowledged 100, 101


def test_a_lane_unparked_during_another_lanes_reread_is_not_lost_on_restart() -> None:
    stream = Stream.of(100, "ABABABABAB")
    drv = Driver(stream, batch=1, park_after=1, check_metadata=False)
    drv.fetch_all()  # A: 100 102 104 106 108; B: 101 103 105 107 109
    drv.part.park(drv.part.lanes["A"], 102)
    drv.send_all("A")  # 100
    assert drv.drive("A")  # re-read from 102 (seek applied at once)
    assert drv.part.read_pos == 102
    drv.send("B", ok=False)  # 101 fails: B parks from its queue head, 103
    assert drv.part.lanes["B"].parked_from == 103
    drv.send("B")  # 101 delivered
    assert drv.drive("B")  # 103 >= read_pos 102: released, no rewind
    point, metadata = drv.commit()  # regression (once): "se1|7|A=0" at 102, B not listed
    parsed = parse_metadata(metadata, point)
    assert parsed is not None and parsed[0] == 109
    nxt = drv.restart()
    nxt.drain()  # regression (once): B's lane starts at P = 109, 103..109 are skipped (LossError)
    assert sorted(set(range(100, 110)) - set(nxt.ledger.acked)) == []


def test_a_reread_of_an_inherited_lagging_lane_keeps_it_in_the_metadata() -> None:
    stream = Stream.of(100, "AB" * 15)  # A: even offsets, B: odd
    ledger = Ledger()
    for offset in stream.offsets("B", 100, 120):  # the last instance delivered B up to P
        ledger.ack(-1, "B", offset)
    meta = f"{METADATA_VERSION}|19|A=0"  # C = 100, P = 119, A lagging from 100
    drv = Driver(stream, 100, meta, ledger=ledger, batch=1, park_after=1, check_metadata=False)
    assert drv.part.lanes["A"].catching_up_until == 119
    drv.fetch(10)  # A: 100..108 taken, B skipped
    drv.send("A", ok=False)  # 100 fails: parks from 102
    drv.send("A")  # 100 delivered
    assert drv.drive("A")  # re-read from 102 (regression, once: catching_up_until 119 -> 109)
    drv.fetch(8)  # 102..109
    drv.send_all("A")
    drv.commit()  # regression (once): "se1|9|" at 110, claiming A's 110..118 delivered
    nxt = drv.restart()
    nxt.drain()  # regression (once): A's lane starts at P = 119, 110..118 are skipped (LossError)
    assert sorted(set(range(100, 130)) - set(nxt.ledger.acked)) == []


def test_metadata_stays_readable_while_a_lane_catches_up() -> None:
    stream = Stream.of(100, "AB" * 10)
    ledger = Ledger()
    for offset in stream.offsets("B", 100, 120):
        ledger.ack(-1, "B", offset)
    drv = Driver(stream, 100, f"{METADATA_VERSION}|19|A=0", ledger=ledger)
    drv.fetch(6)  # A's 100, 102, 104
    drv.send_all("A")
    point, metadata = drv.commit()
    assert point == 106
    assert parse_metadata(metadata, point) == (119, {"A": 106})


def test_a_restart_while_a_lane_catches_up_costs_at_most_duplicates() -> None:
    """A restart while a lane catches up: at most duplicates of healthy tenants, no loss."""
    stream = Stream.of(100, "AB" * 10)
    ledger = Ledger()
    for offset in stream.offsets("B", 100, 120):
        ledger.ack(-1, "B", offset)
    drv = Driver(stream, 100, f"{METADATA_VERSION}|19|A=0", ledger=ledger)
    drv.fetch(6)
    drv.send_all("A")
    drv.commit()
    nxt = drv.restart()
    nxt.drain()
    assert set(nxt.ledger.acked) == set(range(100, 120))
    assert set(nxt.ledger.duplicates) <= set(stream.offsets("B", 106))


def test_a_failure_during_a_reread_does_not_redeliver_the_batch_in_flight() -> None:
    stream = Stream.of(100, "ABABAB")  # A: 100 102 104; B: 101 103 105
    drv = Driver(stream, batch=1, park_after=1, runner_park_point=True)
    drv.fetch_all()
    drv.part.park(drv.part.lanes["A"], 102)
    drv.send_all("A")
    assert drv.drive("A")  # re-read from 102
    drv.send("B")  # 101
    drv.send("B")  # 103
    drv.send("B", ok=False)  # 105 in flight fails: parked from read_pos = 102
    assert drv.part.lanes["B"].parked_from == 106  # above 105, which stays in flight
    drv.send("B")
    drv.drive("B")
    drv.drain()
    assert drv.ledger.duplicates == []


@pytest.mark.parametrize("early_refill", [False, True], ids=["drained", "early-refill"])
def test_property_parking_and_restarts_lose_nothing(early_refill: bool) -> None:
    for seed in FEWER_SEEDS:
        simulate(seed, park=True, restarts=True, check_metadata=False, early_refill=early_refill)


@pytest.mark.parametrize("early_refill", [False, True], ids=["drained", "early-refill"])
def test_property_parking_commits_only_true_metadata(early_refill: bool) -> None:
    for seed in FEWER_SEEDS:
        simulate(seed, park=True, restarts=False, early_refill=early_refill)


def test_property_commit_metadata_is_always_readable() -> None:
    for seed in FEWER_SEEDS:
        assert simulate(seed, park=False, restarts=True).unreadable == 0, seed
