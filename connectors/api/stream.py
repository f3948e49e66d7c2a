"""NDJSON streaming of a large range: one event per line, chunked, never all in memory.

Who calls it: the list endpoint of ``connectors.api.app`` when the client's ``Accept`` asks
for ``application/x-ndjson``. Rows come from the store's paged ``stream`` iterator and are
written in small batches; ``StreamResponse.write`` waits while the client is slow, so memory
stays at about one store page whatever the range.

The first row is read before the headers are sent, so a store that fails on the first page
(unavailable, or its query cancelled at the statement timeout) is still answered with a problem
document. Once the headers are sent (``STREAMING`` is then set on the request) an error can no
longer become one: the handler raises and the connection is dropped without the last chunk, so
a client can tell an interrupted stream from a complete one. A client that resumes restarts
from the last timestamp it saw and drops the event ids it already has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from connectors.api.metrics import ApiMetrics
from connectors.index.model import StoredEvent

NDJSON = "application/x-ndjson"
# Set on a request once its NDJSON headers are sent: errors must then drop the connection.
STREAMING = web.RequestKey("siem_export_streaming", bool)
_FLUSH_EVENTS = 200
_FLUSH_BYTES = 256 * 1024


def wants_ndjson(accept: str | None) -> bool:
    """Whether ``Accept`` prefers NDJSON to JSON (JSON on a tie or without a preference)."""
    if not accept:
        return False
    q_ndjson = q_json = 0.0
    for media_range in accept.split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.lower()
        if kind == NDJSON:
            q_ndjson = max(q_ndjson, q)
        elif kind == "application/json":
            q_json = max(q_json, q)
    return q_ndjson > 0 and q_ndjson > q_json


async def stream_ndjson(
    request: web.Request,
    rows: AsyncIterator[StoredEvent],
    check: Callable[[StoredEvent], None],
    metrics: ApiMetrics,
) -> web.StreamResponse:
    """Send every row of ``rows`` as a line; ``check`` may raise to abort the stream."""
    try:
        # Before the headers, so that a store failing at once still gets a problem document.
        row = await anext(rows, None)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        response.enable_chunked_encoding()
        request[STREAMING] = True
        try:
            await response.prepare(request)
            batch: list[bytes] = []
            size = 0
            while row is not None:
                check(row)
                batch.append(row.body)
                batch.append(b"\n")
                size += len(row.body) + 1
                if len(batch) >= 2 * _FLUSH_EVENTS or size >= _FLUSH_BYTES:
                    await response.write(b"".join(batch))
                    metrics.streamed.inc(len(batch) // 2)
                    batch, size = [], 0
                row = await anext(rows, None)
            if batch:
                await response.write(b"".join(batch))
                metrics.streamed.inc(len(batch) // 2)
            await response.write_eof()
        except BaseException:
            # Headers (and maybe lines) are out: abort so that no last chunk, and no error
            # page appended by the server, can make the stream look complete.
            if request.transport is not None:
                request.transport.abort()
            raise
    finally:
        # Release the store's cursor or connection even when the client went away.
        aclose = getattr(rows, "aclose", None)
        if aclose is not None:
            await aclose()
    return response
