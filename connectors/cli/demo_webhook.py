"""The webhook part of ``siem-export demo``: the real connector process into a local receiver.

Starts a small receiver on 127.0.0.1 (plain HTTP: the demo has no certificate, so it turns on
the two settings an operator would need for that, and says so), writes a destinations file
with a fresh signing secret, runs ``siem-export run webhook`` as its own process in a fresh
consumer group (``demo_support``), waits until every event of this demo run has arrived, stops
the connector with SIGTERM, and prints what arrived: requests, events per tenant, order,
signatures, and the connector's own /metrics figures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click
from aiohttp import web

from connectors.cli.demo_support import Arrivals, ConnectorRun, free_port, run_connector
from connectors.settings import Settings
from connectors.webhook.signing import WebhookSigner

_METRICS = (
    'siem_export_delivered_total{connector="webhook"}',
    'siem_export_webhook_requests_total{result="2xx"}',
)


@dataclass
class _Received:
    since: str
    signer: WebhookSigner
    requests: int = 0
    bad_signatures: int = 0
    arrivals: Arrivals = field(default_factory=Arrivals)
    sample: tuple[dict[str, str], bytes] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        sent = request.headers.get("webhook-signature", "").split()
        expected = self.signer.headers(
            request.headers.get("webhook-id", "-"),
            body,
            int(request.headers.get("webhook-timestamp", "0")),
        )["webhook-signature"].split()
        if not set(sent) & set(expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        data = json.loads(body)
        events = data if isinstance(data, list) else [data]
        # The demo's fresh consumer group starts at the beginning of the topic: events of
        # earlier demo runs on the same broker arrive too, and are not counted.
        if any(event["timestamp"] >= self.since for event in events):
            self.requests += 1
        for event in events:
            if event["timestamp"] >= self.since:
                self.arrivals.add(event["tenant_id"], event["event_id"])
                if self.sample is None:
                    keep = ("Content-Type", "webhook-id", "webhook-timestamp", "webhook-signature")
                    self.sample = ({k: request.headers[k] for k in keep}, body)
        return web.Response(status=204)


def run_webhook_demo(
    settings: Settings, since: str, expected: dict[str, list[str]], show: int
) -> None:
    """Deliver this run's events through ``siem-export run webhook`` and report (step 5)."""
    asyncio.run(_demo(settings, since, expected, show))


async def _demo(settings: Settings, since: str, expected: dict[str, list[str]], show: int) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    received = _Received(since, WebhookSigner([secret]))
    app = web.Application()
    app.router.add_post("/siem/in", received.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    total = sum(len(v) for v in expected.values())
    with tempfile.TemporaryDirectory(prefix="siem-export-demo-") as tmp:
        dest_file = Path(tmp) / "destinations.yaml"
        dest = {"url": f"http://127.0.0.1:{port}/siem/in", "signing_secret": secret}
        dest_file.write_text(json.dumps({"tenants": {"*": {"webhook": dest}}}))
        click.echo(
            "   demo-only settings: SIEM_EXPORT_WEBHOOK__ALLOW_HTTP=true, "
            "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS='[\"127.0.0.0/8\"]' (the receiver is a "
            "plain-HTTP server on loopback; both are refused by default)"
        )
        click.echo(f"   siem-export run webhook --destinations {dest_file.name}  ->  {dest['url']}")
        try:
            run = await run_connector(
                settings,
                "webhook",
                dest_file,
                lambda: received.arrivals.distinct() >= total,
                _METRICS,
                {
                    "SIEM_EXPORT_WEBHOOK__ALLOW_HTTP": "true",
                    "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
                },
            )
        finally:
            await runner.cleanup()
    _report(received, expected, total, run, show)


def _report(
    received: _Received,
    expected: dict[str, list[str]],
    total: int,
    run: ConnectorRun,
    show: int,
) -> None:
    arrivals = received.arrivals
    got = arrivals.distinct()
    click.echo(
        f"   {got} of {total} events arrived in {received.requests} signed requests "
        f"({run.seconds:.1f} s, connector start included); connector stopped with exit code "
        f"{run.code}"
    )
    if received.sample is not None and show:
        headers, body = received.sample
        for name, value in headers.items():
            click.echo(f"   {name}: {value[:60]}{'…' if len(value) > 60 else ''}")
        click.echo(f"   {body.decode()[:400]}")
    arrivals.conclude("webhook", expected, run, received.bad_signatures, "bad signatures")
