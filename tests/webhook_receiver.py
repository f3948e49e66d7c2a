"""A real HTTPS webhook receiver for the webhook tests: records what arrives, fails on purpose.

It runs an ``aiohttp.web`` server on 127.0.0.1 with a trustme certificate for ``localhost``
and records, per tenant, the event ids of every request it accepted, in arrival order
(duplicates included). Faults are drawn from a seeded RNG: 500s, 429 with ``Retry-After``,
and slow answers that outlast the client's timeout (the events are recorded first, as a real
receiver would have processed them: that is how duplicates arise). Tenants in ``gone`` get
410. Signatures are checked with the ``standardwebhooks`` library when a secret is given.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web
from standardwebhooks.webhooks import Webhook


@dataclass
class Faults:
    """Probabilities of each fault per request (drawn in this order)."""

    error_500: float = 0.0
    throttle_429: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 0.0
    retry_after: str = "1"


@dataclass
class Receiver:
    faults: Faults = field(default_factory=Faults)
    seed: int = 7
    secret: str | None = None
    gone: set[str] = field(default_factory=set)
    received: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    bad_signatures: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - fault injection, not security
        self._verifier = Webhook(self.secret) if self.secret else None

    async def start(self, tls: ssl.SSLContext | None) -> None:
        app = web.Application()
        app.router.add_post("/in", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to read the bound port
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def total(self) -> int:
        return sum(len(v) for v in self.received.values())

    def distinct(self) -> set[str]:
        return {e for v in self.received.values() for e in v}

    def first_arrivals(self, tenant: str) -> list[str]:
        seen: set[str] = set()
        order = []
        for event_id in self.received.get(tenant, []):
            if event_id not in seen:
                seen.add(event_id)
                order.append(event_id)
        return order

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self._verifier is not None:
            try:
                self._verifier.verify(body, dict(request.headers))
            except Exception:  # noqa: BLE001 - any verification failure is a bad signature
                self.bad_signatures += 1
                return self._answer(400)
        data: Any = json.loads(body)
        events = data if isinstance(data, list) else [data]
        tenants = {e["tenant_id"] for e in events}
        if tenants & self.gone:
            return self._answer(410)
        draw = self._rng.random()
        f = self.faults
        if draw < f.error_500:
            return self._answer(500)
        if draw < f.error_500 + f.throttle_429:
            return self._answer(429, {"Retry-After": f.retry_after})
        for event in events:
            self.received[event["tenant_id"]].append(event["event_id"])
        if draw < f.error_500 + f.throttle_429 + f.slow:
            await asyncio.sleep(f.slow_seconds)
        return self._answer(204)

    def _answer(self, status: int, headers: dict[str, str] | None = None) -> web.Response:
        self.statuses[status] += 1
        return web.Response(status=status, headers=headers)


def localhost_tls(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for ``localhost`` and the CA bundle that trusts it."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    bundle = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return server, bundle
