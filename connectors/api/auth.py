"""Machine-account authentication of the API: bearer tokens, scopes, and the audit trail of it.

Who calls it: ``siem-export accounts create`` (``new_token``, ``hash_token``) and every
authenticated request of ``connectors.api.app`` (``Authenticator.authenticate``).

A token is ``zse_`` followed by 32 random bytes in base64url (43 characters). Only its SHA-256
digest is stored; the token itself is printed once when the account is created. A plain hash
is enough (no slow KDF): the token has 256 bits of entropy, so there is nothing to guess.

Outcomes, each recorded through ``AuthEvents`` and the ``siem_export_api_authentications``
counter, each answered with the ``WWW-Authenticate`` header of RFC 6750:

    no or non-Bearer Authorization   401  failure  missing_token
    Bearer value not shaped a token  401  failure  malformed_token
    no account has that token        401  failure  unknown_token
    the account was revoked          401  failure  revoked_token   (tenant known: attributed)
    account lacks the needed scope   403  denied   insufficient_scope
    otherwise                        ---  success  ok
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from typing import Protocol

from connectors.api.metrics import ApiMetrics
from connectors.api.ports import ApiStore
from connectors.api.problems import Forbidden, Unauthorized
from connectors.index.model import Account

TOKEN_PREFIX = "zse_"  # noqa: S105 - a prefix, not a secret
AUDIT_READ = "audit:read"
SIEM_ADMIN = "siem:admin"  # reserved for the destination configuration endpoints
SCOPES = (AUDIT_READ, SIEM_ADMIN)
REALM = "siem-export"

_TOKEN = re.compile(r"zse_[A-Za-z0-9_-]{43}\Z")
_log = logging.getLogger(__name__)


def new_token() -> str:
    """A fresh random token; show it once, store only ``hash_token`` of it."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return TOKEN_PREFIX + raw


def hash_token(token: str) -> bytes:
    """The SHA-256 digest under which a token's account is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).digest()


class AuthEvents(Protocol):
    """Where each authentication is recorded as an audit event (``connectors.api.auth_events``).

    ``tenant_id`` and ``account_id`` are None when the token names no account. ``outcome`` is
    ``success``, ``failure`` or ``denied``; ``reason`` a fixed word (module docstring). Must not
    block: it is called on the event loop for every request.
    """

    def record(
        self,
        tenant_id: str | None,
        account_id: str | None,
        outcome: str,
        source_ip: str | None,
        reason: str,
    ) -> None: ...


class Authenticator:
    """Turns an ``Authorization`` header into an account allowed to use an endpoint."""

    def __init__(self, store: ApiStore, events: AuthEvents, metrics: ApiMetrics) -> None:
        self._store = store
        self._events = events
        self._metrics = metrics

    async def authenticate(
        self, authorization: str | None, source_ip: str | None, scope: str
    ) -> Account:
        """The account behind a bearer token holding ``scope``; else Unauthorized/Forbidden."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            self._note(None, None, "failure", source_ip, "missing_token")
            raise Unauthorized(
                "Send a machine account token as 'Authorization: Bearer <token>'.",
                {"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        token = token.strip()
        if not _TOKEN.match(token):
            self._note(None, None, "failure", source_ip, "malformed_token")
            raise _invalid_token("The bearer token is not a siem-export machine account token.")
        account = await self._store.account_by_token_hash(hash_token(token))
        if account is None:
            self._note(None, None, "failure", source_ip, "unknown_token")
            raise _invalid_token("The bearer token is not valid.")
        if account.revoked_ms is not None:
            self._note(account.tenant_id, account.account_id, "failure", source_ip, "revoked_token")
            # The same words as an unknown token: a caller learns nothing about revocation.
            raise _invalid_token("The bearer token is not valid.")
        if scope not in account.scopes:
            self._note(
                account.tenant_id, account.account_id, "denied", source_ip, "insufficient_scope"
            )
            raise Forbidden(
                f"This machine account lacks the scope {scope!r}.",
                {
                    "WWW-Authenticate": (
                        f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'
                    )
                },
            )
        self._note(account.tenant_id, account.account_id, "success", source_ip, "ok")
        return account

    def _note(
        self,
        tenant_id: str | None,
        account_id: str | None,
        outcome: str,
        source_ip: str | None,
        reason: str,
    ) -> None:
        self._metrics.auth.labels(outcome, reason).inc()
        try:
            self._events.record(tenant_id, account_id, outcome, source_ip, reason)
        except Exception as exc:  # recording must never turn into a failed request
            self._metrics.auth_events.labels("lost").inc()
            _log.error(
                "Authentication audit event could not be recorded.",
                extra={"reason": reason, "error_type": type(exc).__name__},
            )


def _invalid_token(detail: str) -> Unauthorized:
    return Unauthorized(
        detail,
        {
            "WWW-Authenticate": (
                f'Bearer realm="{REALM}", error="invalid_token", '
                'error_description="the access token is not valid"'
            )
        },
    )
