"""The webhook part of ``siem-export demo``: the real connector process into a local receiver.

Starts a small receiver on 127.0.0.1 (plain HTTP: the demo has no certificate, so it turns on
the two settings an operator would need for that, and says so), writes a destinations file
with a fresh signing secret, runs ``siem-export run webhook`` as its own process in a fresh
consumer group, waits until every event of this demo run has arrived, stops the connector
with SIGTERM, and prints what arrived: requests, events per tenant, order, signatures, and
the connector's own /metrics figures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import click
from aiohttp import web

from connectors.settings import Settings
from connectors.webhook.signing import WebhookSigner
from streams.errors import StreamsError

WAIT_SECONDS = 120.0


@dataclass
class _Received:
    since: str
    signer: WebhookSigner
    requests: int = 0
    bad_signatures: int = 0
    by_tenant: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
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
                self.by_tenant[event["tenant_id"]].append(event["event_id"])
                if self.sample is None:
                    keep = ("Content-Type", "webhook-id", "webhook-timestamp", "webhook-signature")
                    self.sample = ({k: request.headers[k] for k in keep}, body)
        return web.Response(status=204)

    def distinct(self) -> int:
        return len({e for ids in self.by_tenant.values() for e in ids})


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
    port, ops_port = _free_port(), _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    total = sum(len(v) for v in expected.values())
    with tempfile.TemporaryDirectory(prefix="siem-export-demo-") as tmp:
        dest_file = Path(tmp) / "destinations.yaml"
        dest = {"url": f"http://127.0.0.1:{port}/siem/in", "signing_secret": secret}
        dest_file.write_text(json.dumps({"tenants": {"*": {"webhook": dest}}}))
        env = {
            **os.environ,
            "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "SIEM_EXPORT_TOPICS__EVENTS": settings.topics.events,
            "SIEM_EXPORT_TOPICS__DLQ": settings.topics.dlq,
            "SIEM_EXPORT_TOPICS__ALERTS": settings.topics.alerts,
            "SIEM_EXPORT_ENGINE__GROUP_ID": f"siem-export-demo-{int(time.time())}",
            "SIEM_EXPORT_OPS__PORT": str(ops_port),
            "SIEM_EXPORT_WEBHOOK__ALLOW_HTTP": "true",
            "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            "SIEM_EXPORT_LOG_LEVEL": "WARNING",
        }
        click.echo(
            "   demo-only settings: SIEM_EXPORT_WEBHOOK__ALLOW_HTTP=true, "
            "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS='[\"127.0.0.0/8\"]' (the receiver is a "
            "plain-HTTP server on loopback; both are refused by default)"
        )
        click.echo(f"   siem-export run webhook --destinations {dest_file.name}  ->  {dest['url']}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connectors", "run", "webhook", "--destinations",
            str(dest_file), env=env,
        )  # fmt: skip
        began = time.monotonic()
        try:
            while received.distinct() < total and proc.returncode is None:
                if time.monotonic() - began > WAIT_SECONDS:
                    break
                await asyncio.sleep(0.2)
            seconds = time.monotonic() - began
            metrics = await _scrape(ops_port)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            await runner.cleanup()
    _report(received, expected, total, seconds, metrics, code, show)


def _report(
    received: _Received,
    expected: dict[str, list[str]],
    total: int,
    seconds: float,
    metrics: dict[str, float],
    code: int,
    show: int,
) -> None:
    got = received.distinct()
    click.echo(
        f"   {got} of {total} events arrived in {received.requests} signed requests "
        f"({seconds:.1f} s, connector start included); connector stopped with exit code {code}"
    )
    if received.sample is not None and show:
        headers, body = received.sample
        for name, value in headers.items():
            click.echo(f"   {name}: {value[:60]}{'…' if len(value) > 60 else ''}")
        click.echo(f"   {body.decode()[:400]}")
    in_order = sum(
        1 for t, ids in expected.items() if _first_arrivals(received.by_tenant.get(t, [])) == ids
    )
    duplicates = sum(len(v) for v in received.by_tenant.values()) - got
    counts = Counter({t: len(set(v)) for t, v in received.by_tenant.items()})
    click.echo(
        f"   {len(expected)} tenants, {in_order} received in partition order; "
        f"{duplicates} duplicates; {received.bad_signatures} bad signatures; per tenant: "
        + ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
    )
    if metrics:
        figures = ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items()))
        click.echo(f"   connector /metrics (earlier demo runs on this broker included): {figures}")
    if got != total or in_order != len(expected) or received.bad_signatures or code != 0:
        raise StreamsError(
            f"webhook demo: {got}/{total} events, {in_order}/{len(expected)} tenants in order, "
            f"{received.bad_signatures} bad signatures, connector exit code {code}"
        )


def _first_arrivals(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


async def _scrape(port: int) -> dict[str, float]:
    wanted = (
        'siem_export_delivered_total{connector="webhook"}',
        'siem_export_webhook_requests_total{result="2xx"}',
    )
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    except aiohttp.ClientError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[name.split("{")[0].removeprefix("siem_export_")] = float(value)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
