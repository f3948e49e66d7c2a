"""State shared by the CLI commands: where settings come from, loaded once on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from connectors.errors import SettingsError
from connectors.logs import configure_logging
from connectors.settings import Settings, load_settings

EXIT_USAGE = 2
EXIT_FAILURE = 1


@dataclass
class CliContext:
    """Carried in ``click.Context.obj``; ``settings`` loads on first access."""

    settings_file: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.settings_file)
            except SettingsError as exc:
                click.echo(f"siem-export: {exc}", err=True)
                raise SystemExit(EXIT_USAGE) from exc
            configure_logging(self._settings.log_level)
        return self._settings


def settings_of(ctx: click.Context) -> Settings:
    """The loaded settings of this invocation (exits 2 with a message when they are wrong)."""
    obj = ctx.find_object(CliContext)
    if obj is None:
        obj = ctx.ensure_object(CliContext)
    return obj.settings


def fail(message: str, code: int = EXIT_FAILURE) -> SystemExit:
    """Print a one-line error to stderr and return the SystemExit to raise."""
    click.echo(f"siem-export: {message}", err=True)
    return SystemExit(code)
