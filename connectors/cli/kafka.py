"""``siem-export kafka up|status|down``: a local single-node Apache Kafka for development.

Thin wrapper over ``streams.devbroker``. ``up`` prints the bootstrap address alone on stdout
(``BOOTSTRAP=$(siem-export kafka up)``) and a human-readable line on stderr. Exit codes: 0 on
success, 1 when the broker cannot be fetched/started/stopped (one-line reason on stderr, e.g.
java missing), 3 from ``status`` when the broker is not running.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click

from streams import devbroker
from streams.devbroker_jars import ensure_jars
from streams.errors import BrokerError

NOT_RUNNING = 3
DEFAULT_PORT = 9092  # where the default settings (kafka.bootstrap_servers) look

_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=devbroker.DEFAULT_DATA_DIR,
    show_default=True,
    help="Directory holding the broker's configuration, data, logs and state.",
)


def _fail(error: BrokerError) -> NoReturn:
    click.echo(f"siem-export kafka: {error}", err=True)
    raise click.exceptions.Exit(1)


@click.group()
def kafka() -> None:
    """Run a local single-node Apache Kafka for development and tests."""


@kafka.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="PLAINTEXT port on 127.0.0.1 [default: the recorded one if free, else 9092 if free,"
    " else any free one].",
)
@_data_dir_option
def up(port: int | None, data_dir: Path) -> None:
    """Start the broker (fetching the Kafka jars once) and wait until it answers."""
    try:
        broker = devbroker.up(
            data_dir,
            port,
            preferred_port=DEFAULT_PORT,
            progress=lambda m: click.echo(m, err=True),
        )
    except BrokerError as error:
        _fail(error)
    verb = "started" if broker.started else "already running"
    click.echo(
        f"Kafka {devbroker.KAFKA_VERSION} {verb} at {broker.bootstrap} "
        f"(pid {broker.pid}, data dir {broker.data_dir})",
        err=True,
    )
    click.echo(broker.bootstrap)


@kafka.command()
def fetch() -> None:
    """Fetch the pinned Kafka jars from Maven Central into the cache (no-op when cached)."""
    try:
        lib = ensure_jars(lambda m: click.echo(m, err=True))
    except BrokerError as error:
        _fail(error)
    click.echo(f"Kafka {devbroker.KAFKA_VERSION} jars in {lib}", err=True)


@kafka.command()
@_data_dir_option
def status(data_dir: Path) -> None:
    """Tell whether the broker runs and answers (exit 0) or not (exit 3)."""
    try:
        state = devbroker.status(data_dir)
    except BrokerError as error:
        _fail(error)
    if state.running:
        click.echo(f"running at {state.bootstrap} (pid {state.pid}, data dir {state.data_dir})")
        return
    if state.pid is not None:
        click.echo(f"not answering at {state.bootstrap} (pid {state.pid} is alive)")
    else:
        click.echo(f"not running (data dir {state.data_dir})")
    raise click.exceptions.Exit(NOT_RUNNING)


@kafka.command()
@_data_dir_option
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait.")
def down(data_dir: Path, timeout: float) -> None:
    """Stop the broker cleanly (SIGKILL after --timeout seconds). Does nothing if stopped."""
    try:
        stopped = devbroker.down(data_dir, timeout)
    except BrokerError as error:
        _fail(error)
    click.echo("stopped" if stopped else f"not running (data dir {data_dir})")
