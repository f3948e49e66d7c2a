"""IndexSink's group commit and failure answers, against a fake store (no database)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from connectors.index.config import StoreSettings
from connectors.index.errors import StoreError, StoreUnavailableError
from connectors.index.model import IndexedEvent
from connectors.index.sink import IndexSink
from streams.errors import SinkError
from tests.syslog_support import synthetic_envelopes

pytestmark = pytest.mark.unit


class SlowStore:
    """Records each insert call; each takes a little while, so sends pile up meanwhile."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail: StoreError | None = None
        self.closed = False

    async def insert(self, events: Sequence[IndexedEvent]) -> int:
        self.calls.append(len(events))
        await asyncio.sleep(0.05)
        if self.fail is not None:
            raise self.fail
        return len(events)

    async def close(self) -> None:
        self.closed = True


def _sink(store: SlowStore, max_rows: int = 5000) -> IndexSink:
    return IndexSink(store, StoreSettings(), max_rows=max_rows, registry=CollectorRegistry())  # type: ignore[arg-type]


async def test_concurrent_sends_share_transactions() -> None:
    store = SlowStore()
    sink = _sink(store)
    envs = synthetic_envelopes(200)
    batches = [envs[i : i + 10] for i in range(0, 200, 10)]  # 20 sends of 10
    answers = await asyncio.gather(*(sink.send(b[0].tenant_id, b) for b in batches))
    assert answers == [None] * 20
    assert sum(store.calls) == 200
    assert len(store.calls) <= 3  # the first alone, then the rest together
    await sink.close()
    assert store.closed


async def test_max_rows_bounds_a_transaction() -> None:
    store = SlowStore()
    sink = _sink(store, max_rows=30)
    envs = synthetic_envelopes(100)
    await asyncio.gather(
        *(sink.send(envs[i].tenant_id, envs[i : i + 10]) for i in range(0, 100, 10))
    )
    assert max(store.calls) <= 30 and sum(store.calls) == 100
    await sink.close()


@pytest.mark.parametrize(
    ("error", "retriable"),
    [(StoreUnavailableError("connection refused"), True), (StoreError("bad SQL"), False)],
)
async def test_a_failed_transaction_fails_every_send_in_it(
    error: StoreError, retriable: bool
) -> None:
    store = SlowStore()
    store.fail = error
    sink = _sink(store)
    envs = synthetic_envelopes(20)
    results = await asyncio.gather(
        sink.send(envs[0].tenant_id, envs[:10]),
        sink.send(envs[10].tenant_id, envs[10:]),
        return_exceptions=True,
    )
    assert all(isinstance(r, SinkError) for r in results)
    assert {r.retriable for r in results if isinstance(r, SinkError)} == {retriable}
    assert all(str(error) in str(r) for r in results)
    await sink.close()
