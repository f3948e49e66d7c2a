"""``siem-export serve``: the REST API of the audit events (``connectors.api``).

Stateless: it reads the store named by ``SIEM_EXPORT_STORE__URL`` (the index process writes
it) and scales by replicas, which must share ``SIEM_EXPORT_API__CURSOR_SECRET``. Wrong
settings exit with 2 before anything starts; SIGTERM stops it cleanly with 0.
"""

from __future__ import annotations

import asyncio

import click

from connectors.api.server import serve_api
from connectors.cli.context import EXIT_USAGE, fail, settings_of
from connectors.errors import SettingsError
from connectors.index.errors import StoreError


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on (default: api.host, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="TCP port (default: api.port, 8080).",
)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the REST API of the audit events (stateless; scale it with replicas)."""
    settings = settings_of(ctx)
    if settings.api.cursor_secret is None:
        raise fail(
            "no cursor secret: set SIEM_EXPORT_API__CURSOR_SECRET (at least 32 random "
            "characters, the same on every replica)",
            EXIT_USAGE,
        )
    try:
        code = asyncio.run(
            serve_api(
                settings,
                host or settings.api.host,
                settings.api.port if port is None else port,
            )
        )
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except StoreError as exc:
        raise fail(f"store: {exc}") from exc
    except OSError as exc:
        raise fail(f"cannot listen: {exc.strerror or exc}") from exc
    raise SystemExit(code)
