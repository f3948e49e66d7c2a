"""``Envelope.release``/``restore``: a sink frees decoded events early, the engine brings them
back before it offers the same events again (retry, or the rest after a partial answer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
from confluent_kafka import Message

from streams.codec import AuditEventCodec
from streams.engine.lanes import Lane
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError
from streams.event import AuditEvent, to_json_bytes, validate_event
from streams.synthetic import EventFactory
from tests.engine_support import FakeMessage, unit_engine

pytestmark = pytest.mark.unit

TOPIC = "audit.events"
TENANT = "tnt_release"
CODEC = AuditEventCodec()


def events(count: int) -> list[AuditEvent]:
    return [
        validate_event({**e, "tenant_id": TENANT}) for e in EventFactory(1, seed=5).events(count)
    ]


def wrapped(event: AuditEvent, offset: int = 0, decode: bool = True) -> Envelope:
    raw = CODEC.encode(event)
    return Envelope(
        TOPIC, 0, offset, 1, TENANT, event, len(raw), raw, CODEC.decode if decode else None
    )


def test_release_frees_the_event_and_restore_decodes_it_again() -> None:
    event = events(1)[0]
    env = wrapped(event)
    env.release()
    assert env.event == {}  # nothing readable until restored: a forgotten restore fails loudly
    assert env.restore() == event
    assert env.event == event
    assert env.restore() is env.event  # restoring twice decodes once


def test_json_of_a_released_event_is_the_same_bytes() -> None:
    event = events(1)[0]
    env = wrapped(event)
    env.release()
    assert env.json == to_json_bytes(event)


def test_without_a_decoder_release_keeps_the_event() -> None:
    event = events(1)[0]
    env = wrapped(event, decode=False)
    env.release()
    assert env.event is event
    assert env.restore() is event


class ReleasingSink:
    """Reads every event it is offered, releases them all, and fails or settles on command."""

    name = "test"
    max_batch = 10

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers  # per attempt: "fail" or "settle:N" or "ok"
        self.seen: list[list[AuditEvent]] = []

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        self.seen.append([dict(env.event) for env in batch])  # type: ignore[misc]
        for env in batch:
            env.release()
        answer = self.answers.pop(0) if self.answers else "ok"
        if answer == "fail":
            raise SinkError("down", retriable=True, retry_after=0)
        if answer.startswith("settle:"):
            return SendResult(settled=int(answer.split(":")[1]))
        return None

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("answers", "attempts"),
    [
        (["fail", "ok"], [4, 4]),  # a retry offers the same four events, decoded again
        (["settle:1", "ok"], [4, 3]),  # the rest after a partial answer, decoded again
        (["settle:2", "fail", "ok"], [4, 2, 2]),
    ],
)
async def test_the_engine_offers_released_events_decoded_again(
    answers: list[str], attempts: list[int]
) -> None:
    sent = events(4)
    sink = ReleasingSink(list(answers))
    records = [FakeMessage(0, i, TENANT.encode(), CODEC.encode(e)) for i, e in enumerate(sent)]
    with unit_engine(sink, TOPIC) as engine:
        engine._dispatch(cast(list[Message], records))
        part = engine._parts[0]
        lane: Lane = part.lanes[TENANT]
        await engine._drive(part, lane)
    assert [len(batch) for batch in sink.seen] == attempts
    for batch in sink.seen:
        # Every attempt saw whole events, the last ones of the lane in order.
        assert batch == sent[len(sent) - len(batch) :]
    assert not lane.in_flight and not lane.queue
