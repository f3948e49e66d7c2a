"""``siem-export topics create``: the input, dead-letter, alerts and config topics."""

from __future__ import annotations

import click

from connectors.cli.context import fail, settings_of
from streams.errors import StreamsError
from streams.topics import ensure_topics, standard_topics


@click.group()
def topics() -> None:
    """Manage the Kafka topics siem-export uses."""


@topics.command("create")
@click.option(
    "--partitions",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Partitions of the input topic (default: topics.events_partitions, 12).",
)
@click.pass_context
def create(ctx: click.Context, partitions: int | None) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    settings = settings_of(ctx)
    topic_cfg = settings.topics
    if partitions is not None:
        topic_cfg = topic_cfg.model_copy(update={"events_partitions": partitions})
    try:
        results = ensure_topics(settings.kafka, standard_topics(topic_cfg))
    except StreamsError as exc:
        raise fail(str(exc)) from exc
    for r in results:
        line = f"{r.status:8} {r.name} ({r.partitions} partitions)"
        click.echo(line + (f" — {r.note}" if r.note else ""))
