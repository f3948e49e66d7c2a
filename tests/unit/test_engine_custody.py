"""A batch a sink took into custody fails after the lane went on (``Delivering._custody_done``):
the lane parks at the oldest batch in custody and reads everything from there again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest
from confluent_kafka import Message

from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError
from tests.engine_support import FakeMessage, unit_engine

pytestmark = pytest.mark.unit

TENANT = "tnt_custody"


class CustodySink:
    """Takes every batch into custody; the test settles the futures."""

    name = "test"
    max_batch = 3

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        self.futures.append(asyncio.get_running_loop().create_future())
        return SendResult(pending=self.futures[-1])

    async def close(self) -> None:
        return None


def records(first: int, count: int) -> list[Message]:
    # Records the lanes never decode before the failure: the queue holds them as fetched.
    return cast(list[Message], [FakeMessage(0, first + i, TENANT.encode()) for i in range(count)])


async def test_a_failed_batch_in_custody_parks_the_lane_and_drops_its_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = CustodySink()
    with unit_engine(sink) as engine:
        monkeypatch.setattr(engine._codec, "decode", lambda raw: {"tenant_id": TENANT})
        part = engine._parts[0]
        engine._dispatch(records(0, 6))
        lane = part.lanes[TENANT]
        await engine._drive(part, lane)  # 0-2 and 3-5 in custody
        assert [(c.first_offset, c.last_offset) for c in lane.custody] == [(0, 2), (3, 5)]
        engine._dispatch(records(6, 4))  # queued behind them
        assert engine._buffered == 4
        # A re-read asked for earlier from further up must not survive the failure.
        lane.parked_from, lane.unpark_requested = 8, True
        sink.futures[1].set_exception(SinkError("the second file failed", retriable=True))
        await asyncio.sleep(0)  # the future's callbacks
        assert not lane.custody and not lane.queue and engine._buffered == 0
        assert lane.parked_from == 0  # the oldest batch in custody, not the one that failed
        assert not lane.unpark_requested
        assert lane.high_water == -1 and lane.failures == 1
        sink.futures[0].cancel()
