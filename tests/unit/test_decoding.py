"""Decoding on worker processes (``streams.engine.decoding``) and the lane that waits for it
(``Delivering._open_decoded``): what a batch becomes, and what happens when the lane's queue
changes, or a worker dies, while the batch is being decoded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from confluent_kafka import Message

from streams.codec import AuditEventCodec
from streams.engine import decoding
from streams.engine.decoding import Decoded, DecodePool, decode_batch, round_size
from streams.engine.lanes import Lane, PartitionLanes
from streams.engine.runner import Engine
from streams.engine.sink import RELEASED, Envelope, SendResult
from streams.event import to_json_bytes, validate_event
from streams.synthetic import EventFactory
from tests.engine_support import FakeMessage, unit_engine

TENANT = "tnt_decoding"


def _records(codec: AuditEventCodec, tenant: str, count: int, seed: int = 3) -> list[bytes]:
    events = [
        validate_event({**e, "tenant_id": tenant}) for e in EventFactory(1, seed=seed).events(count)
    ]
    return [codec.encode(e) for e in events]


@pytest.mark.unit
def test_a_batch_becomes_each_events_json_or_the_reason_to_dead_letter_it() -> None:
    codec = AuditEventCodec()
    good = _records(codec, TENANT, 3)
    other = _records(codec, "tnt_other", 1)[0]
    out = decode_batch(codec, [good[0], b"\x00not avro", other, good[1], good[2]], TENANT)
    assert out[0] == to_json_bytes(codec.decode(good[0]))
    assert out[3:] == [to_json_bytes(codec.decode(v)) for v in good[1:]]
    assert isinstance(out[1], tuple) and out[1][1] == "CorruptRecordError"
    assert out[2] == (
        f"record key {TENANT!r} does not match tenant_id 'tnt_other'",
        "TenantMismatch",
    )


@pytest.mark.unit
def test_a_round_is_an_even_share_of_the_jobs_up_to_the_record_limit() -> None:
    limit = decoding._ROUND_RECORDS
    assert round_size([10] * 12, 2) == 6  # two idle workers: half each
    assert round_size([10] * 12, 1) == 12
    assert round_size([10] * 5, 2) == 3  # the first one takes the odd job
    assert round_size([limit // 4 + 1] * 10, 1) == 4  # cut after the job reaching the limit
    assert round_size([limit * 2, 5], 1) == 1  # one job above the limit still goes, alone
    assert round_size([7], 3) == 1


@contextlib.asynccontextmanager
async def _running(codec: AuditEventCodec, processes: int) -> AsyncIterator[DecodePool]:
    """A started pool of real worker processes, closed and joined at the end."""
    pool = DecodePool(codec, processes)
    pool.start()
    try:
        yield pool
    finally:
        pool.close()
        await asyncio.to_thread(pool.join)


@pytest.mark.component
async def test_workers_decode_the_batches_of_many_lanes_each_in_order() -> None:
    codec = AuditEventCodec()
    async with _running(codec, 2) as pool:
        lanes = {f"tnt_{n}": _records(codec, f"tnt_{n}", 40, seed=n) for n in range(12)}
        answers = await asyncio.gather(*(pool.decode(v, t) for t, v in lanes.items()))
        for (tenant, values), answer in zip(lanes.items(), answers, strict=True):
            assert answer == decode_batch(codec, values, tenant)
        # A second wave, asked for while nothing else is pending, is sent on its own.
        again = await pool.decode(lanes["tnt_0"][:5], "tnt_0")
        assert again == decode_batch(codec, lanes["tnt_0"][:5], "tnt_0")
    assert await pool.decode(lanes["tnt_0"], "tnt_0") is None  # closed: the lane decodes itself


@pytest.mark.component
async def test_a_dead_worker_is_replaced_at_once_then_at_most_once_per_interval() -> None:
    codec = AuditEventCodec()
    values = _records(codec, TENANT, 20)
    expected = decode_batch(codec, values, TENANT)

    async def kill_the_worker() -> int:
        (worker,) = pool._workers
        pid = worker.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(worker.process.join, 10)
        await asyncio.sleep(0.05)  # the loop sees the pipe close
        assert pool._workers == []
        return pid

    async with _running(codec, 1) as pool:
        assert await pool.decode(values, TENANT) == expected
        first = await kill_the_worker()
        assert await pool.decode(values, TENANT) == expected  # a new worker at once
        assert pool.restarts == 1
        assert [w.process.pid for w in pool._workers] != [first]
        await kill_the_worker()
        # A second death within the interval: the lanes decode themselves meanwhile.
        assert await pool.decode(values, TENANT) is None
        assert pool.restarts == 1
        pool._next_restart = 0.0  # the interval has passed
        assert await pool.decode(values, TENANT) == expected
        assert pool.restarts == 2
    assert not [p for p in pool._context.active_children() if p.name == "siem-export-decoder"]


@pytest.mark.component
async def test_batches_being_decoded_when_the_pool_closes_come_back_to_their_lanes() -> None:
    codec = AuditEventCodec()
    values = _records(codec, TENANT, 200)
    async with _running(codec, 1) as pool:
        asked = asyncio.create_task(pool.decode(values, TENANT))
        await asyncio.sleep(0)  # asked: waiting for its answer
        await asyncio.sleep(0)  # the round went to the worker
        assert pool._workers[0].jobs is not None
        pool.close()  # before the loop could read any answer
        assert await asked is None


class _HeldDecoder:
    """A stand-in for ``DecodePool`` that answers only when the test says so."""

    def __init__(self, codec: AuditEventCodec) -> None:
        self.codec = codec
        self.go = asyncio.Event()
        self.asked: list[int] = []
        self.answer_none = False

    async def decode(self, values: Sequence[bytes], tenant_id: str) -> list[Decoded] | None:
        self.asked.append(len(values))
        await self.go.wait()
        return None if self.answer_none else decode_batch(self.codec, values, tenant_id)


class _Taking:
    name = "test"
    max_batch = 4
    json_only = True

    def __init__(self) -> None:
        self.batches: list[list[Envelope]] = []

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        self.batches.append(list(batch))
        return None

    async def close(self) -> None:
        return None


@dataclass
class _Held:
    """A never-started engine whose lane ``lane`` has records queued and whose decoding
    workers are a ``_HeldDecoder``."""

    engine: Engine
    sink: _Taking
    decoder: _HeldDecoder
    part: PartitionLanes
    lane: Lane
    values: list[bytes]


@contextlib.contextmanager
def _held(count: int, broken: int = 0) -> Iterator[_Held]:
    """``count`` records of TENANT queued in its lane from offset 0, then ``broken`` ones
    that do not decode."""
    sink = _Taking()
    with unit_engine(sink) as engine:
        decoder = _HeldDecoder(engine._codec)
        engine._decoder = cast(Any, decoder)
        values = _records(engine._codec, TENANT, count) + [b"\x00broken"] * broken
        messages = [FakeMessage(0, i, TENANT.encode(), v) for i, v in enumerate(values)]
        part = engine._parts[0]
        engine._dispatch(cast(list[Message], messages))
        yield _Held(engine, sink, decoder, part, part.lanes[TENANT], values)


@pytest.mark.unit
async def test_decoded_batches_keep_their_records_queued_until_they_come_back() -> None:
    with _held(6) as h:
        engine, held, part, lane, values = h.engine, h.decoder, h.part, h.lane, h.values
        opening = asyncio.create_task(engine._open_decoded(part, lane))
        await asyncio.sleep(0)
        assert held.asked == [4]
        # Still queued while decoded: the commit point cannot pass them.
        assert len(lane.queue) == 6 and engine._buffered == 6
        assert part.commit_point() == 0
        held.go.set()
        batch = await opening
        assert batch is not None
        assert [e.offset for e in batch] == [0, 1, 2, 3]
        assert all(e.event is RELEASED for e in batch)
        assert [e.json for e in batch] == [
            to_json_bytes(engine._codec.decode(v)) for v in values[:4]
        ]
        assert batch[0].restore()["tenant_id"] == TENANT  # a sink may still ask for the event
        assert len(lane.queue) == 2 and engine._buffered == 2


@pytest.mark.unit
@pytest.mark.parametrize("change", ["failure-park", "tail-park", "revoked"])
async def test_a_batch_whose_records_left_the_queue_meanwhile_is_not_sent(change: str) -> None:
    with _held(6) as h:
        engine, held, part, lane = h.engine, h.decoder, h.part, h.lane
        opening = asyncio.create_task(engine._open_decoded(part, lane))
        await asyncio.sleep(0)
        if change == "failure-park":  # a batch in custody failed: everything is read again
            lane.epoch += 1
            engine._buffered -= part.park(lane, 0)
        elif change == "tail-park":  # records 2.. dropped: the batch's last record is gone
            engine._buffered -= part.park(lane, 2)
        else:
            part.revoked = True
        held.go.set()
        assert await opening is None
        assert h.sink.batches == []
        kept = 0 if change == "failure-park" else 2 if change == "tail-park" else 6
        assert [r[0] for r in lane.queue] == list(range(kept))
        assert engine._buffered == kept


@pytest.mark.unit
async def test_when_the_workers_cannot_the_lane_decodes_its_batch_itself() -> None:
    with _held(3, broken=1) as h:
        engine, part, lane = h.engine, h.part, h.lane
        h.decoder.answer_none = True
        h.decoder.go.set()
        batch = await engine._open_decoded(part, lane)
        assert batch is not None
        assert [e.offset for e in batch] == [0, 1, 2]
        assert all(e.event is not RELEASED for e in batch)  # decoded in the loop
        assert lane.dead_lettering == {3}  # the broken record, in its place
        assert not lane.queue and engine._buffered == 0
