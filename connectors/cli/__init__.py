"""The ``siem-export`` command line: one click group, one module per sub-command family.

Called by the console script. Each sub-module owns its commands; this module only wires them
together. Errors become one-line messages on stderr with a stable exit code: 2 for wrong
settings or usage, 1 for runtime failures.
"""

from __future__ import annotations

from pathlib import Path

import click

from connectors.cli.accounts import accounts
from connectors.cli.context import CliContext
from connectors.cli.demo import demo
from connectors.cli.generate import generate
from connectors.cli.kafka import kafka
from connectors.cli.run import run
from connectors.cli.serve import serve
from connectors.cli.topics import topics


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML settings file (or SIEM_EXPORT_SETTINGS_FILE).",
)
@click.pass_context
def cli(ctx: click.Context, settings_file: Path | None) -> None:
    """Export the Zaita platform's audit events to customers' SIEMs."""
    ctx.obj = CliContext(settings_file)


for command in (kafka, topics, generate, run, serve, accounts, demo):
    cli.add_command(command)


def main() -> None:
    """Entry point of the console script."""
    cli()
