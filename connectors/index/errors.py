"""Errors raised by the index store (``connectors.index``).

Every error carries a ``retriable`` flag; the index process and the API read the flag, not the
type, to decide whether to try again (the API answers 503 with Retry-After for a retriable one).

    ConnectorsError                  (connectors.errors)
    └── StoreError                   a statement failed for a reason retrying will not fix (a
        │                            constraint the store's own logic should have prevented,
        │                            SQL the server rejects); retriable = False
        ├── StoreUnavailableError    the database cannot be reached or is busy right now:
        │   │                        connection refused or lost, pool exhausted, SQLite file
        │   │                        locked past the busy timeout; retriable = True
        │   └── StoreTimeoutError    a statement ran longer than the store's statement timeout
        │                            and was cancelled (a heavy query, a busy server, a lock
        │                            held elsewhere); ``timeout`` says how long it was allowed;
        │                            retriable = True (it may pass when the server is quieter)
        └── MigrationError           the schema cannot be brought to this code's version: the
                                     database is newer than this code, an applied migration's
                                     file has changed, or a migration failed; retriable = False

Database drivers' exceptions never leave the package: each store maps them at its boundary
(``raise StoreUnavailableError(...) from exc``). No message quotes a connection URL's password.
"""

from __future__ import annotations

from connectors.errors import ConnectorsError


class StoreError(ConnectorsError):
    """A store operation failed and retrying it as it is will not help."""

    retriable = False


class StoreUnavailableError(StoreError):
    """The database is unreachable or busy; the same call may succeed later."""

    retriable = True


class StoreTimeoutError(StoreUnavailableError):
    """A statement was cancelled after the store's statement timeout (``timeout`` seconds)."""

    retriable = True

    def __init__(self, message: str, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


class MigrationError(StoreError):
    """The schema cannot be migrated to the version this code expects."""

    retriable = False
