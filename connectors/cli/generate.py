"""``siem-export generate``: publish realistic synthetic audit events through the publisher."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

import click

from connectors.cli.context import fail, settings_of
from connectors.settings import Settings
from streams.errors import StreamsError
from streams.publisher import Delivery, Publisher
from streams.synthetic import EventFactory
from streams.topics import require_topic


@dataclass
class GenerateReport:
    """Counts of one ``generate`` run."""

    published: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_done(self, future: Future[Delivery]) -> None:
        error = future.exception()
        with self._lock:
            if error is None:
                self.delivered += 1
            else:
                self.failed += 1
                self.first_error = self.first_error or str(error)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


def generate_events(
    settings: Settings,
    count: int,
    tenants: int,
    *,
    rate: float | None = None,
    seed: int | None = None,
    start: datetime | None = None,
    topic: str | None = None,
    progress: bool = True,
) -> GenerateReport:
    """Publish ``count`` synthetic events; return what was delivered. Used by the CLI and demo."""
    target = topic or settings.topics.events
    require_topic(settings.kafka, target)
    factory = EventFactory(tenants, seed=seed, start=start)
    report = GenerateReport()
    began = time.monotonic()
    last_progress = began
    with Publisher(settings.kafka, target) as publisher:
        for i, event in enumerate(factory.events(count)):
            if rate:
                # Pace against the schedule, not the previous event, so the rate holds on average.
                delay = began + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            publisher.publish(event).add_done_callback(report.on_done)
            report.published += 1
            now = time.monotonic()
            if progress and now - last_progress >= 1.0:
                last_progress = now
                click.echo(
                    f"generate: {report.published}/{count} published, {report.delivered} "
                    f"delivered, {report.published / (now - began):.0f} events/s",
                    err=True,
                )
        publisher.flush(60.0)
    report.seconds = time.monotonic() - began
    return report


@click.command()
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="How many events to publish.",
)
@click.option(
    "--tenants",
    "-t",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many tenants the events are spread over (sizes vary like real ones).",
)
@click.option(
    "--rate",
    "-r",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Events per second (default: as fast as the broker takes them).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Make the events identical between runs (timestamps start at --start, "
    "or 2026-03-15T08:00:00Z).",
)
@click.option(
    "--start",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Timestamp of the first event (UTC if no offset is given).",
)
@click.option("--topic", default=None, help="Topic to publish to (default: topics.events).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def generate(
    ctx: click.Context,
    count: int,
    tenants: int,
    rate: float | None,
    seed: int | None,
    start: datetime | None,
    topic: str | None,
    quiet: bool,
) -> None:
    """Publish realistic synthetic audit events across all eight categories."""
    settings = settings_of(ctx)
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    try:
        report = generate_events(
            settings,
            count,
            tenants,
            rate=rate,
            seed=seed,
            start=start,
            topic=topic,
            progress=not quiet,
        )
    except StreamsError as exc:
        raise fail(str(exc)) from exc
    click.echo(
        f"published {report.delivered} events for {tenants} tenants to "
        f"{topic or settings.topics.events} in {report.seconds:.2f} s "
        f"({report.rate:.0f} events/s)"
    )
    if report.failed:
        raise fail(f"{report.failed} events were not delivered; first error: {report.first_error}")
