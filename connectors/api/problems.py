"""RFC 9457 problem documents: every error response of the API is one of these.

Handlers and middlewares raise a ``Problem`` subclass; ``problem_response`` renders it as
``application/problem+json`` with ``type``, ``title``, ``status``, ``detail`` and, for 400,
``invalid_params`` (one ``{"name", "reason"}`` per wrong parameter, the members RFC 9457's own
example uses). The ``type`` URIs are stable identifiers listed in the OpenAPI document; clients
branch on them, never on ``detail``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from connectors.api.errors import ApiError

PROBLEM_JSON = "application/problem+json"
_TYPE_PREFIX = "urn:zaita:siem-export:problem:"


@dataclass(frozen=True)
class InvalidParam:
    """One wrong request parameter and why it is wrong."""

    name: str
    reason: str


class Problem(ApiError):
    """An error answered to the client; subclasses fix the status, type and title."""

    status = 500
    slug = "internal-error"
    title = "Internal server error"

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    @property
    def type_uri(self) -> str:
        return _TYPE_PREFIX + self.slug

    def body(self) -> dict[str, object]:
        return {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class InvalidParameters(Problem):
    status = 400
    slug = "invalid-parameters"
    title = "Invalid request parameters"

    def __init__(self, params: Sequence[InvalidParam]) -> None:
        names = ", ".join(dict.fromkeys(p.name for p in params))
        super().__init__(f"Wrong or unknown parameters: {names}.")
        self.invalid_params = list(params)

    def body(self) -> dict[str, object]:
        return {
            **super().body(),
            "invalid_params": [{"name": p.name, "reason": p.reason} for p in self.invalid_params],
        }


class Unauthorized(Problem):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class Forbidden(Problem):
    status = 403
    slug = "insufficient-scope"
    title = "Insufficient scope"


class NotFound(Problem):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(Problem):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class RateLimited(Problem):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"
    retriable = True

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Rate limit of this machine account reached; retry in {retry_after} s.",
            {"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


class Unavailable(Problem):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"
    retriable = True


class QueryTimeout(Problem):
    """The store cancelled the request's query at its statement timeout."""

    status = 503
    slug = "query-timeout"
    title = "Query timed out"
    retriable = True


def problem_response(problem: Problem) -> web.Response:
    """The HTTP response of a problem, with its extra headers (Retry-After, WWW-Authenticate)."""
    return web.Response(
        status=problem.status,
        body=orjson.dumps(problem.body()),
        content_type=PROBLEM_JSON,
        headers=problem.headers,
    )
