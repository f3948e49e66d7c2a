"""``siem-export accounts create|list|revoke``: the machine accounts of the REST API.

An operator creates an account for one tenant with its scopes; the token is printed once, on
standard output, and only its SHA-256 hash is stored. ``list`` never shows tokens (they are
not kept); ``revoke`` makes a token stop working at the next request. The store is the one
named by ``SIEM_EXPORT_STORE__URL``; its schema is brought up to date first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from connectors.api.auth import SCOPES, hash_token, new_token
from connectors.cli.context import EXIT_USAGE, fail, settings_of
from connectors.index.errors import StoreError
from connectors.index.model import Account
from connectors.index.store import AuditStore, open_store
from connectors.settings import Settings
from streams.event import format_timestamp

T = TypeVar("T")

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")


@click.group()
def accounts() -> None:
    """Manage the REST API's machine accounts (tokens are shown once, stored hashed)."""


@accounts.command("create")
@click.option("--tenant", "tenant_id", required=True, help="Tenant the account may read.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="Scope to grant (repeat for several); audit:read reads audit events.",
)
@click.option("--name", default="api", show_default=True, help="A label for the operator.")
@click.pass_context
def create(ctx: click.Context, tenant_id: str, scopes: tuple[str, ...], name: str) -> None:
    """Create an account and print its token (shown only this once)."""
    if not _TENANT.match(tenant_id):
        raise fail(
            "--tenant must be a tenant id: 1 to 128 letters, digits or _ . : -, "
            "starting with a letter or digit",
            EXIT_USAGE,
        )
    if not name.strip() or not name.isprintable() or len(name) > 200:
        raise fail("--name must be 1 to 200 printable characters", EXIT_USAGE)
    token = new_token()
    account = _with_store(
        settings_of(ctx),
        lambda store: store.create_account(tenant_id, name, scopes, hash_token(token)),
    )
    click.echo(f"account_id: {account.account_id}")
    click.echo(f"tenant_id: {account.tenant_id}")
    click.echo(f"name: {account.name}")
    click.echo(f"scopes: {' '.join(account.scopes)}")
    click.echo(f"token: {token}")
    click.echo(
        "siem-export: the token is shown only this once; give it to the tenant now "
        "(it cannot be recovered, only revoked and replaced).",
        err=True,
    )


@accounts.command("list")
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant's accounts.")
@click.pass_context
def list_(ctx: click.Context, tenant_id: str | None) -> None:
    """List accounts (revoked ones too), oldest first; tokens are never shown."""
    rows = _with_store(settings_of(ctx), lambda store: store.list_accounts(tenant_id))
    click.echo("ACCOUNT_ID\tTENANT_ID\tNAME\tSCOPES\tCREATED\tREVOKED")
    for account in rows:
        click.echo("\t".join(_row(account)))


@accounts.command("revoke")
@click.argument("account_id")
@click.pass_context
def revoke(ctx: click.Context, account_id: str) -> None:
    """Revoke an account: its token stops working at its next request."""
    if not _with_store(settings_of(ctx), lambda store: store.revoke_account(account_id)):
        raise fail(f"no active account {account_id!r}")
    click.echo(f"revoked {account_id}")


def _row(account: Account) -> list[str]:
    revoked = format_timestamp(account.revoked_ms) if account.revoked_ms is not None else "-"
    return [
        account.account_id,
        account.tenant_id,
        account.name,
        ",".join(account.scopes),
        format_timestamp(account.created_ms),
        revoked,
    ]


def _with_store(settings: Settings, action: Callable[[AuditStore], Awaitable[T]]) -> T:
    """Run one store operation on a migrated store; exit 2 on a bad URL, 1 on store errors."""
    try:
        store = open_store(settings.store.url.get_secret_value(), pool_size=1)
    except ValueError as exc:
        raise fail(f"store.url (SIEM_EXPORT_STORE__URL): {exc}", EXIT_USAGE) from exc

    async def run() -> T:
        try:
            await store.migrate()
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        raise fail(f"store: {exc}") from exc
    except ValueError as exc:  # the store's own check of what it is given
        raise fail(str(exc), EXIT_USAGE) from exc
