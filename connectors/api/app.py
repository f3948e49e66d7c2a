"""The REST API application: routes, middlewares and handlers of ``siem-export serve``.

Who calls it: ``connectors.api.server`` (the ``serve`` command) and the tests, through
``make_app``. The app keeps no state between requests but the rate-limit buckets, so it scales
by replicas behind a load balancer.

    GET /v1/openapi.json               the OpenAPI 3.1 document (no authentication)
    GET /v1/audit-events               filtered, keyset-paginated events (JSON pages or NDJSON)
    GET /v1/audit-events/{event_id}    one event

Every authenticated request goes through the same steps:

1. Authenticate the bearer token and check the endpoint's scope (401/403), recording the
   authentication as an audit event (``connectors.api.auth``).
2. Take a token from the account's bucket (429 with Retry-After).
3. Check the parameters (400 naming each wrong one) and verify the cursor against the tenant
   and the filters (400).
4. Ask the store, always with the account's tenant; refuse to serve a row of another tenant or
   a page that does not move forward (500, logged at ERROR: the store is broken).

Errors leave as RFC 9457 problem documents (``connectors.api.problems``), including the
router's own 404 and 405 and store failures (503 with Retry-After when retriable; a query
cancelled at the store's statement timeout is the ``query-timeout`` problem). A JSON page
that has a successor links it with an absolute URL (``connectors.api.links``).
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from connectors.api.auth import AUDIT_READ, Authenticator, AuthEvents
from connectors.api.config import ApiSettings
from connectors.api.cursor import Cursor, CursorCodec
from connectors.api.errors import CursorError
from connectors.api.links import next_page_url
from connectors.api.metrics import ApiMetrics
from connectors.api.params import (
    DEFAULT_LIMIT,
    ListQuery,
    check_event_id,
    check_no_params,
    parse_list_query,
)
from connectors.api.ports import ApiStore
from connectors.api.problems import (
    InvalidParam,
    InvalidParameters,
    MethodNotAllowed,
    NotFound,
    Problem,
    QueryTimeout,
    RateLimited,
    Unavailable,
    problem_response,
)
from connectors.api.ratelimit import RateLimiter
from connectors.api.stream import STREAMING, stream_ndjson, wants_ndjson
from connectors.index.errors import StoreError, StoreTimeoutError
from connectors.index.model import Account, StoredEvent

_log = logging.getLogger(__name__)

_JSON = "application/json"
# The longest query string the document allows, percent-encoded, fits in this request line.
# aiohttp's parser answers a longer line with a plain-text 400 before any middleware runs.
MAX_REQUEST_LINE = 32 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def openapi_document() -> bytes:
    """The OpenAPI document shipped with the package (``connectors/api/openapi.json``)."""
    return importlib.resources.files("connectors.api").joinpath("openapi.json").read_bytes()


def app_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner to serve ``make_app``'s app with (the request-line bound above)."""
    # AppRunner hands its keyword arguments to each connection's request handler (3.14 has no
    # ``handler_args`` here: an unknown one makes it drop them all, with a warning).
    return web.AppRunner(app, max_line_size=MAX_REQUEST_LINE, **kwargs)


def make_app(
    store: ApiStore,
    settings: ApiSettings,
    auth_events: AuthEvents,
    *,
    metrics: ApiMetrics | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The API over ``store``; ``settings.cursor_secret`` must be set."""
    if settings.cursor_secret is None:
        raise ValueError("the API needs api.cursor_secret (SIEM_EXPORT_API__CURSOR_SECRET)")
    cursors = CursorCodec(settings.cursor_secret, settings.cursor_previous_secrets)
    metrics = metrics or ApiMetrics()
    api = _Api(store, settings, cursors, auth_events, metrics, clock, monotonic)
    app = web.Application(middlewares=[api.middleware])
    app.router.add_get("/v1/openapi.json", api.openapi, allow_head=False)
    app.router.add_get("/v1/audit-events", api.list_events, allow_head=False)
    app.router.add_get("/v1/audit-events/{event_id}", api.get_event, allow_head=False)
    return app


class _Api:
    """Handlers and middleware sharing the store, the cursor codec and the rate limiter."""

    def __init__(
        self,
        store: ApiStore,
        settings: ApiSettings,
        cursors: CursorCodec,
        auth_events: AuthEvents,
        metrics: ApiMetrics,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._auth = Authenticator(store, auth_events, metrics)
        self._cursors = cursors
        self._limiter = RateLimiter(settings.rate_per_second, settings.burst, clock=monotonic)
        self._openapi = openapi_document()

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Problem documents for every error, and the request metrics."""
        started = self._monotonic()
        route = _route_of(request)
        try:
            response = await handler(request)
        except Exception as exc:
            if request.get(STREAMING):
                # Headers are gone: the stream aborted its connection (no last chunk), the
                # only way left to tell the client that it is incomplete.
                self._metrics.requests.labels(route, "aborted").inc()
                raise
            response = problem_response(_problem_of(exc, route))
        self._metrics.requests.labels(route, str(response.status)).inc()
        self._metrics.seconds.labels(route).observe(self._monotonic() - started)
        return response

    # ------------------------------------------------------------------ handlers

    async def openapi(self, request: web.Request) -> web.Response:
        check_no_params(request.query)
        return web.Response(body=self._openapi, content_type=_JSON)

    async def get_event(self, request: web.Request) -> web.Response:
        account = await self._admit(request)
        check_no_params(request.query)
        event_id = check_event_id(request.match_info["event_id"])
        row = await self._store.get(account.tenant_id, event_id)
        if row is None:
            raise NotFound(f"No event {event_id!r} in this tenant's audit log.")
        self._own(account, [row])
        return web.Response(body=row.body, content_type=_JSON)

    async def list_events(self, request: web.Request) -> web.StreamResponse:
        account = await self._admit(request)
        tenant = account.tenant_id
        query = parse_list_query(request.query, self._settings)
        ndjson = wants_ndjson(request.headers.get("Accept"))
        if ndjson:
            _check_streamable(query)
        cursor = self._cursor(tenant, query)
        if query.order == "ingestion":
            return await self._by_sequence(request, account, query, cursor)
        window = (
            cursor.window
            if cursor and cursor.window
            else query.window(self._settings, int(self._clock() * 1000))
        )
        where = query.event_filter(window)
        after = cursor.after if cursor else None
        if ndjson:
            return await stream_ndjson(
                request,
                self._store.stream(tenant, where, after=after),
                lambda row: self._own(account, [row]),
                self._metrics,
            )
        limit = query.limit or DEFAULT_LIMIT
        rows = await self._store.query(tenant, where, after=after, limit=limit + 1)
        self._own(account, rows)
        _forward_in_time(after, rows)
        more, rows = len(rows) > limit, rows[:limit]
        next_cursor = None
        if more:
            next_cursor = Cursor("timestamp", query.digest, window, after=rows[-1].position)
        return self._page(request, tenant, rows, next_cursor)

    async def _by_sequence(
        self, request: web.Request, account: Account, query: ListQuery, cursor: Cursor | None
    ) -> web.Response:
        where = query.event_filter((query.start_ms, query.end_ms))
        after = cursor.after_sequence if cursor else None
        limit = query.limit or DEFAULT_LIMIT
        rows = await self._store.query_by_sequence(
            account.tenant_id, where, after_sequence=after, limit=limit
        )
        self._own(account, rows)
        _forward_in_sequence(after, rows)
        # A poller always gets a cursor: an empty page means "caught up, come back later".
        last = rows[-1].sequence if rows else after
        next_cursor = Cursor("ingestion", query.digest, None, after_sequence=last)
        return self._page(request, account.tenant_id, rows, next_cursor)

    # ------------------------------------------------------------------ steps

    async def _admit(self, request: web.Request) -> Account:
        """Steps 1 and 2: authenticate with the audit:read scope, then rate-limit."""
        account = await self._auth.authenticate(
            request.headers.get("Authorization"), request.remote, AUDIT_READ
        )
        wait = self._limiter.acquire(account.account_id)
        if wait:
            self._metrics.rate_limited.inc()
            raise RateLimited(wait)
        return account

    def _cursor(self, tenant_id: str, query: ListQuery) -> Cursor | None:
        """Step 3: a verified cursor issued for this tenant, order and filters."""
        if query.cursor is None:
            return None
        try:
            cursor = self._cursors.decode(tenant_id, query.cursor)
        except CursorError as exc:
            raise InvalidParameters([InvalidParam("cursor", exc.reason)]) from None
        if cursor.order != query.order:
            reason = f"was issued for order={cursor.order}; keep the first request's order"
            raise InvalidParameters([InvalidParam("cursor", reason)])
        if cursor.filter_digest != query.digest:
            reason = (
                "was issued for other filter parameters; repeat the first request's "
                "parameters exactly (only limit may change)"
            )
            raise InvalidParameters([InvalidParam("cursor", reason)])
        return cursor

    def _own(self, account: Account, rows: Sequence[StoredEvent]) -> None:
        """Step 4: never serve another tenant's row, whatever the store returned."""
        for row in rows:
            if row.tenant_id != account.tenant_id:
                _log.error(
                    "Store returned another tenant's event; request refused.",
                    extra={"tenant": account.tenant_id, "event_id": row.event_id},
                )
                raise Problem("The server failed to answer this request.")

    def _page(
        self,
        request: web.Request,
        tenant_id: str,
        rows: Sequence[StoredEvent],
        next_cursor: Cursor | None,
    ) -> web.Response:
        # The bodies are the events exactly as delivered: spliced in, never re-encoded.
        token = self._cursors.encode(tenant_id, next_cursor) if next_cursor else None
        body = b"".join(
            (
                b'{"data":[',
                b",".join(row.body for row in rows),
                b'],"next_cursor":',
                orjson.dumps(token),
                b"}",
            )
        )
        headers = {}
        if token is not None:
            link = next_page_url(
                request, token, trust_forwarded=self._settings.trust_forwarded_headers
            )
            headers["Link"] = f'<{link}>; rel="next"'
        return web.Response(body=body, content_type=_JSON, headers=headers)


def _check_streamable(query: ListQuery) -> None:
    problems = []
    if query.limit is not None:
        problems.append(
            InvalidParam("limit", "not used with Accept: application/x-ndjson (the whole range)")
        )
    if query.order != "timestamp":
        problems.append(InvalidParam("order", "only order=timestamp can be streamed as NDJSON"))
    if problems:
        raise InvalidParameters(problems)


def _forward_in_time(after: tuple[int, str] | None, rows: Sequence[StoredEvent]) -> None:
    positions = [row.position for row in rows]
    if after is not None:
        positions.insert(0, after)
    if any(a >= b for a, b in zip(positions, positions[1:], strict=False)):
        _log.error("Store returned a page out of (timestamp, event_id) order; request refused.")
        raise Problem("The server failed to answer this request.")


def _forward_in_sequence(after: int | None, rows: Sequence[StoredEvent]) -> None:
    sequences = [row.sequence for row in rows]
    if after is not None:
        sequences.insert(0, after)
    if any(a >= b for a, b in zip(sequences, sequences[1:], strict=False)):
        _log.error("Store returned a page out of ingestion order; request refused.")
        raise Problem("The server failed to answer this request.")


def _route_of(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def _problem_of(exc: Exception, route: str) -> Problem:
    """The problem document answering an exception raised by a handler."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, web.HTTPException):
        return _router_problem(exc)
    if isinstance(exc, StoreError):
        return _store_problem(exc)
    _log.exception("API request failed.", extra={"route": route}, exc_info=exc)
    return Problem("The server failed to answer this request.")


def _router_problem(exc: web.HTTPException) -> Problem:
    if exc.status == 404:
        return NotFound("No such path; see /v1/openapi.json.")
    if exc.status == 405:
        allow = exc.headers.get("Allow", "GET")
        return MethodNotAllowed("This path answers only GET.", {"Allow": allow})
    problem = Problem(exc.reason or "Request refused.")
    problem.status = exc.status
    problem.title = exc.reason or "Error"
    problem.slug = "http-error"
    return problem


def _store_problem(exc: StoreError) -> Problem:
    if isinstance(exc, StoreTimeoutError):
        _log.warning(
            "Store query timed out.",
            extra={"timeout_seconds": exc.timeout, "error": str(exc)[:200]},
        )
        # As long as the query was allowed to run: a client retrying the same heavy query
        # sooner would keep the store busy with it.
        return QueryTimeout(
            f"The audit store cancelled this query after its statement timeout of "
            f"{exc.timeout:g} s. Retry later; if it keeps happening, narrow the time range or "
            "add filters.",
            {"Retry-After": str(max(1, math.ceil(exc.timeout)))},
        )
    if exc.retriable:
        _log.warning("Store unavailable.", extra={"error": str(exc)[:200]})
        return Unavailable("The audit store is unavailable; retry later.", {"Retry-After": "1"})
    _log.error("Store failed.", extra={"error": str(exc)[:200]})
    return Problem("The server failed to answer this request.")
