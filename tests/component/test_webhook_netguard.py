"""The SSRF guard in front of a real aiohttp server and client, over loopback only.

Nothing here resolves or contacts a host other than 127.0.0.1 / ::1: names that are not
``localhost`` go through a fake inner resolver that maps them to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from connectors.webhook.netguard import (
    AddressPolicy,
    DestinationRefused,
    find_refusal,
    guarded_connector,
    guarded_session,
)

pytestmark = pytest.mark.component

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, as an attacker's DNS would for an internal target."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.names.append(host)
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


@dataclass
class Server:
    port: int
    hits: list[str] = field(default_factory=list)


async def _serve(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(port=0)

    async def hook(request: web.Request) -> web.Response:
        server.hits.append(request.path)
        return web.Response(text="ok")

    async def redirect(request: web.Request) -> web.Response:
        server.hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/hook", hook)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async for running in _serve():
        yield running


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("webhook.test").configure_cert(context)
    async for running in _serve(context):
        yield running


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_is_refused_by_default(server: Server, host: str) -> None:
    async with guarded_session(AddressPolicy(), allow_http=True) as session:
        with pytest.raises((DestinationRefused, aiohttp.ClientError)) as info:
            await session.get(f"http://{host}:{server.port}/hook?token=hunter2")
    refused = find_refusal(info.value)
    assert refused is not None
    assert refused.host == host
    assert "a loopback address" in refused.reason
    assert "hunter2" not in refused.reason
    # aiohttp 3.14 lets it through unwrapped, so callers can catch it directly.
    assert isinstance(info.value, DestinationRefused)
    assert server.hits == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_allow_listed_loopback_succeeds(server: Server, host: str) -> None:
    async with (
        guarded_session(AddressPolicy(LOOPBACK), allow_http=True) as session,
        session.get(f"http://{host}:{server.port}/hook") as response,
    ):
        assert response.status == 200
        assert await response.text() == "ok"
    assert server.hits == ["/hook"]


async def test_plain_http_is_refused_unless_allowed(server: Server) -> None:
    async with guarded_session(AddressPolicy(LOOPBACK), allow_http=False) as session:
        with pytest.raises(DestinationRefused, match="scheme 'http'"):
            await session.get(f"http://127.0.0.1:{server.port}/hook")
    assert server.hits == []


async def test_redirect_to_a_refused_literal_is_not_followed(server: Server) -> None:
    # The target is an IP literal, which the resolver never sees; the middleware catches it.
    target = f"http://[::1]:{server.port}/hook"
    async with guarded_session(AddressPolicy(LOOPBACK), allow_http=True) as session:
        with pytest.raises(DestinationRefused, match=r"::1 is a loopback address"):
            await session.get(f"http://127.0.0.1:{server.port}/redirect", params={"to": target})
    assert server.hits == ["/redirect"]


async def test_connector_alone_does_not_see_ip_literals(server: Server) -> None:
    """Tripwire: aiohttp skips the resolver for IP literals, which is why the middleware exists.

    If this starts failing, aiohttp changed _resolve_host; revisit the guard's design.
    """
    async with (
        aiohttp.ClientSession(connector=guarded_connector(AddressPolicy())) as session,
        session.get(f"http://127.0.0.1:{server.port}/hook") as response,
    ):
        assert response.status == 200


async def test_tls_connects_to_the_checked_address_and_verifies_the_url_host(
    tls_server: Server, client_tls: ssl.SSLContext
) -> None:
    # The certificate is only valid for webhook.test, and the socket goes to 127.0.0.1: success
    # proves both that the resolver's address was used and that SNI/verification used the name.
    inner = LoopbackResolver()
    async with (
        guarded_session(
            AddressPolicy(LOOPBACK),
            allow_http=False,
            inner_resolver=inner,
            connector_kwargs={"ssl": client_tls},
        ) as session,
        session.get(f"https://webhook.test:{tls_server.port}/hook") as response,
    ):
        assert response.status == 200
    assert inner.names == ["webhook.test"]


async def test_tls_to_another_name_fails_certificate_verification(
    tls_server: Server, client_tls: ssl.SSLContext
) -> None:
    async with guarded_session(
        AddressPolicy(LOOPBACK),
        allow_http=False,
        inner_resolver=LoopbackResolver(),
        connector_kwargs={"ssl": client_tls},
    ) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://other.test:{tls_server.port}/hook")


async def test_name_resolving_to_loopback_is_refused_over_tls(
    tls_server: Server, client_tls: ssl.SSLContext
) -> None:
    async with guarded_session(
        AddressPolicy(),
        allow_http=False,
        inner_resolver=LoopbackResolver(),
        connector_kwargs={"ssl": client_tls},
    ) as session:
        with pytest.raises(DestinationRefused) as info:
            await session.get(f"https://webhook.test:{tls_server.port}/hook")
    assert info.value.reason.startswith("webhook.test resolves to 127.0.0.1, a loopback address;")
    assert tls_server.hits == []


async def test_proxied_requests_are_refused(server: Server) -> None:
    # Through a proxy the destination would be resolved by the proxy, out of the guard's sight.
    async with guarded_session(AddressPolicy(LOOPBACK), allow_http=True) as session:
        with pytest.raises(DestinationRefused, match="proxy"):
            await session.get(
                f"http://127.0.0.1:{server.port}/hook", proxy=f"http://127.0.0.1:{server.port}"
            )
    assert server.hits == []
