"""``siem-export demo``: the main job end to end on local defaults.

Starts (or reuses) the local Kafka of ``.kafka/``, creates the topics, publishes a stream of
synthetic audit events, reads them back from the topic and prints some exactly as a customer's
SIEM receives them, with a summary. Then every delivery method runs as the real process an
operator runs, each checked against the topic (every event of this run arrived, each tenant's
in partition order): the webhook connector (``siem-export run webhook``) into a local
receiver; the syslog connector (``siem-export run syslog``) into a private local rsyslogd; the
storage connector (``siem-export run storage``) into a bucket of a private SeaweedFS S3 server,
listing the objects it wrote and their metadata; and the index (``siem-export run index``) into
a SQLite audit store, which ``siem-export serve`` then answers for one tenant's machine account
(``siem-export accounts create``) to a real ``curl``. Each step starts and stops its own servers
in a temporary directory.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import click

from connectors.cli.context import fail, settings_of
from connectors.cli.demo_api import run_api_demo
from connectors.cli.demo_storage import run_storage_demo
from connectors.cli.demo_syslog import run_syslog_demo
from connectors.cli.demo_webhook import run_webhook_demo
from connectors.cli.generate import generate_events
from connectors.settings import Settings
from streams import devbroker
from streams.config import KafkaConfig
from streams.errors import StreamsError
from streams.event import to_json_bytes
from streams.tail import read_records
from streams.topics import ensure_topics, standard_topics

DEFAULT_PORT = 9092


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=devbroker.DEFAULT_DATA_DIR,
    show_default=True,
    help="Directory of the local broker.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Broker port [default: the recorded one, else 9092 if free, else any].",
)
@click.option("--count", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--tenants", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="How many events to print as a SIEM receives them.",
)
@click.option("--keep-running", is_flag=True, help="Leave the broker running at the end.")
@click.pass_context
def demo(
    ctx: click.Context,
    data_dir: Path,
    port: int | None,
    count: int,
    tenants: int,
    show: int,
    keep_running: bool,
) -> None:
    """Run everything locally: Kafka, topics, a stream of events, and what a SIEM receives."""
    settings = settings_of(ctx)
    click.echo(f"1. Local Apache Kafka {devbroker.KAFKA_VERSION} in {data_dir}")
    try:
        broker = devbroker.up(
            data_dir,
            port,
            preferred_port=DEFAULT_PORT,
            progress=lambda m: click.echo(f"   {m}", err=True),
        )
    except StreamsError as exc:
        raise fail(str(exc)) from exc
    click.echo(f"   {'started' if broker.started else 'already running'} at {broker.bootstrap}")
    kafka = KafkaConfig(**{**settings.kafka.model_dump(), "bootstrap_servers": broker.bootstrap})
    settings = settings.model_copy(update={"kafka": kafka})
    try:
        _run(settings, count, tenants, show)
    except StreamsError as exc:
        raise fail(str(exc)) from exc
    finally:
        if broker.started and not keep_running:
            devbroker.down(data_dir)
            click.echo(
                f"\nStopped the broker (run with --keep-running to explore it; "
                f"'siem-export kafka down --data-dir {data_dir}' stops it)."
            )
        else:
            click.echo(
                f"\nThe broker keeps running at {broker.bootstrap}: "
                f"export SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap}"
            )


def _run(settings: Settings, count: int, tenants: int, show: int) -> None:
    click.echo("2. Topics")
    for r in ensure_topics(settings.kafka, standard_topics(settings.topics)):
        click.echo(f"   {r.status:8} {r.name} ({r.partitions} partitions)")

    click.echo(f"3. Publishing {count} synthetic audit events for {tenants} tenants")
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    report = generate_events(settings, count, tenants, progress=False)
    click.echo(
        f"   {report.delivered} delivered in {report.seconds:.2f} s "
        f"({report.rate:.0f} events/s), {report.failed} failed"
    )

    click.echo(f"4. Reading {settings.topics.events} back, as a SIEM receives the events")
    seen = 0
    bad = 0
    by_category: Counter[tuple[str, str]] = Counter()
    tenant_ids: set[str] = set()
    expected: dict[str, list[str]] = {}
    samples: list[bytes] = []
    for record in read_records(settings.kafka, settings.topics.events, idle_timeout=10.0):
        if record.event is None:
            bad += 1
            continue
        event = record.event
        if str(event["timestamp"]) < since:
            continue  # from an earlier demo run on the same broker
        seen += 1
        tenant_ids.add(str(event["tenant_id"]))
        expected.setdefault(str(event["tenant_id"]), []).append(str(event["event_id"]))
        by_category[(str(event["action"]).split(".", 1)[0], str(event["outcome"]))] += 1
        if len(samples) < show and (
            not samples or event["outcome"] != "success" or len(samples) == show - 1
        ):
            samples.append(to_json_bytes(event))
    for body in samples:
        click.echo(f"   {body.decode()}")
    click.echo(
        f"\n   {seen} events of this run read back from the topic, {len(tenant_ids)} "
        f"tenants, {bad} undecodable records"
    )
    categories = sorted({c for c, _ in by_category})
    click.echo(f"   {'category':<16}{'success':>9}{'failure':>9}{'denied':>9}")
    for category in categories:
        row = [by_category[(category, o)] for o in ("success", "failure", "denied")]
        click.echo(f"   {category:<16}{row[0]:>9}{row[1]:>9}{row[2]:>9}")
    if seen != report.delivered:
        raise StreamsError(f"published {report.delivered} events but read back {seen}")

    click.echo("5. Webhook delivery: the connector process POSTs each tenant's events in order")
    run_webhook_demo(settings, since, expected, show)

    click.echo("6. Syslog forwarding: the connector process sends each tenant's events to rsyslog")
    run_syslog_demo(settings, since, expected, show)

    click.echo("7. Cloud storage: the connector process writes each tenant's events as files to S3")
    run_storage_demo(settings, since, expected)

    click.echo("8. REST API: the index process stores the events, the API serves them to curl")
    run_api_demo(settings, since, expected, show)
