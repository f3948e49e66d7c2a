"""Errors raised by the REST API package.

Every error carries ``retriable``: whether the same request may succeed later unchanged.

    ConnectorsError                       (connectors.errors)
    └── ApiError                          base of everything raised here
        ├── CursorError                   a cursor failed verification: malformed, signed with
        │                                 another key or for another tenant, or issued for
        │                                 other filters; ``reason`` says which. Becomes a 400.
        └── Problem                       a request is answered with an RFC 9457 problem
            │                             document (``connectors.api.problems``)
            ├── InvalidParameters   400   ``invalid_params`` names each parameter and why
            ├── Unauthorized        401   missing, malformed, unknown or revoked token
            ├── Forbidden           403   the account lacks the scope the endpoint needs
            ├── NotFound            404   no such event for this tenant, or no such path
            ├── MethodNotAllowed    405   the path exists for other methods
            ├── RateLimited         429   retriable; ``retry_after`` seconds
            ├── Unavailable         503   retriable; the store could not answer
            └── QueryTimeout        503   retriable; the store cancelled the query at its
                                          statement timeout
"""

from __future__ import annotations

from connectors.errors import ConnectorsError


class ApiError(ConnectorsError):
    """Base class of every error raised by the API package."""


class CursorError(ApiError):
    """A cursor cannot be used for this request; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
