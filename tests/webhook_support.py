"""Helpers for the webhook sink's component tests: a recording HTTPS receiver, a fake resolver
that maps test names to 127.0.0.1, envelopes built without Kafka, destinations files.

Nothing here contacts an address other than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
import yaml
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import CollectorRegistry
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connectors.destinations import Destinations, load_destinations
from connectors.webhook.sink import WebhookSink
from streams.codec import AuditEventCodec
from streams.engine.sink import Envelope
from streams.errors import SinkError
from streams.event import parse_timestamp, validate_event
from streams.synthetic import EventFactory

HOST = "webhook.test"
LOOPBACK_NAMES = frozenset({HOST, "localhost"})


class LoopbackResolver(AbstractResolver):
    """Resolves the test names to 127.0.0.1; any other name does not resolve at all."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.names.append(host)
        if host not in LOOPBACK_NAMES:
            raise OSError(f"{host}: not a test name")
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


@dataclass
class Hit:
    """One request as the receiver saw it."""

    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int] | None = None  # the client's socket address

    def events(self) -> list[Any]:
        """The events of a generic JSON body (an object or an array)."""
        data = orjson.loads(self.body)
        return data if isinstance(data, list) else [data]


Answerer = Callable[[Hit], Awaitable[web.StreamResponse]]


def replies(*answers: int | web.StreamResponse, then: int = 204) -> Answerer:
    """Answer with ``answers`` in turn (a status or a ready response), then ``then`` forever."""
    queue = list(answers)

    async def answer(hit: Hit) -> web.StreamResponse:
        item = queue.pop(0) if queue else then
        return web.Response(status=item) if isinstance(item, int) else item

    return answer


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that records every POST and answers as told."""

    tls: ssl.SSLContext | None
    answer: Answerer = field(default_factory=replies)
    verifier: Webhook | None = None
    hits: list[Hit] = field(default_factory=list)
    bad_signatures: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{HOST}:{self.port}"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.release.set()  # let slow handlers finish instead of holding up the shutdown
        if self._runner is not None:
            await self._runner.cleanup()

    async def hold(self, hit: Hit) -> web.StreamResponse:
        """An answer that only comes when the receiver stops (outlasts any client timeout)."""
        await asyncio.wait_for(self.release.wait(), timeout=30)
        return web.Response(status=204)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        hit = Hit(
            request.path,
            request.query_string,
            dict(request.headers),
            await request.read(),
            (peer[0], peer[1]) if peer else None,
        )
        self.hits.append(hit)
        if self.verifier is not None:
            try:
                self.verifier.verify(hit.body, hit.headers)
            except WebhookVerificationError:
                self.bad_signatures += 1
                return web.Response(status=400, text="bad signature")
        return await self.answer(hit)


_CODEC = AuditEventCodec()


def envelope(event: Mapping[str, Any], offset: int = 0) -> Envelope:
    """The engine's wrapping of one validated event (no Kafka involved): the record as the
    publisher encodes it and the decoder the engine attaches, so a sink that releases events
    after encoding them (``Envelope.release``) does so here as it does in production."""
    canonical = validate_event(event)
    raw = _CODEC.encode(canonical)
    return Envelope(
        topic="audit.events",
        partition=0,
        offset=offset,
        timestamp_ms=parse_timestamp(canonical["timestamp"]),
        tenant_id=canonical["tenant_id"],
        event=canonical,
        size=len(raw),
        raw=raw,
        decode=_CODEC.decode,
    )


def again(batch: Sequence[Envelope]) -> list[Envelope]:
    """``batch`` as the engine offers it again (a retry, or the rest after a partial answer):
    events the sink released after encoding them are decoded again."""
    for env in batch:
        env.restore()
    return list(batch)


def envelopes(tenant_id: str, count: int, seed: int = 1) -> list[Envelope]:
    """``count`` realistic events of ``tenant_id``, in order."""
    factory = EventFactory(1, seed=seed)
    return [
        envelope({**event, "tenant_id": tenant_id}, offset)
        for offset, event in enumerate(factory.events(count))
    ]


_FILES = itertools.count()


def write_destinations(directory: Path, tenants: Mapping[str, Any]) -> Destinations:
    """Write a destinations file (YAML) with these ``tenants`` entries and load it."""
    path = directory / f"destinations-{next(_FILES)}.yaml"
    plain = orjson.loads(orjson.dumps(dict(tenants), default=str))  # Paths as strings
    path.write_text(yaml.safe_dump({"tenants": plain}), encoding="utf-8")
    return load_destinations(path)


def server_tls(ca: trustme.CA, *, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("webhook.test").configure_cert(context)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


def hook(url: str, ca_bundle: Path | None, **options: Any) -> dict[str, Any]:
    """A tenant entry with a webhook to ``url``."""
    return {"webhook": {"url": url, **({"ca_bundle": ca_bundle} if ca_bundle else {}), **options}}


@dataclass
class Rig:
    """A sink with its own health, alerts and metrics."""

    sink: WebhookSink
    dests: Destinations
    registry: CollectorRegistry
    alerts: list[tuple[str, bytes]] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(record) for _, record in self.alerts]

    def states(self) -> list[str]:
        return [record["state"] for record in self.records()]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def fail(self, tenant_id: str, batch: Sequence[Envelope]) -> SinkError:
        with pytest.raises(SinkError) as info:
            await self.sink.send(tenant_id, batch)
        return info.value
