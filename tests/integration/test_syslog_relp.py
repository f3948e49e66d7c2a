"""RELP client (connectors.syslog.relp) against a real rsyslogd's imrelp, plain and over mutual
TLS: byte-exact delivery, the window, certificate checks, and what survives a restart.

rsyslog's output is read back byte-exact (tests/rsyslog_support.py), and it acknowledges a
message only after writing it (Direct main queue), so "every resolved future is in the file"
can be checked at once, without waiting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from connectors.syslog.relp import RelpClient, RelpError
from tests.rsyslog_support import (
    HOST,
    MAX_MESSAGE_SIZE,
    Rsyslog,
    rsyslog_fixture,  # noqa: F401 - the fixture "rsyslog"
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
async def quiet_loop(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Nothing for asyncio to complain about: no failure left unretrieved, no write into a
    dead socket, no task left behind."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    gc.collect()
    assert errors == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("relp-reader")] == []
    loop.set_exception_handler(None)


def message(n: int, body: str = "an audit event") -> bytes:
    return (
        f"<110>1 2026-03-15T08:42:17.003Z zaita siem-export - certificate.issue [audit@32473 "
        f'event_id="evt_{n:06d}" tenant_id="tnt_1" outcome="success"] {body}'
    ).encode()


def awkward_messages(count: int) -> list[bytes]:
    """Messages with what breaks naive framing: LFs, quotes, brackets, non-ASCII, one big one."""
    bodies = [
        '{"who":"Zoë","what":"ünïcødé €","note":"a \\"quoted\\" word"}',
        "line one\nline two\r\n\tline three\n",
        '[not an SD element] ] [ "unbalanced',
        "2 rsp 6 200 OK\n3 syslog 5 fake!\n",  # RELP look-alikes inside a message
        "trailing LF\n",
        "日本語のログ 🚀 \\ backslash / slash",
        "\x01\x1f\x7f control characters",
    ]
    messages = [message(n, bodies[n % len(bodies)]) for n in range(count)]
    messages[count // 2] = message(count // 2, "B" * (100 * 1024))  # 100 KiB, one frame
    return messages


def relp_tls_context(rsyslog: Rsyslog, ca_pem: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_pem or rsyslog.ca_pem))
    context.load_cert_chain(str(rsyslog.client_pem))
    return context


async def send_all(client: RelpClient, messages: list[bytes]) -> list[asyncio.Future[None]]:
    futures = []
    for number, item in enumerate(messages, start=1):
        futures.append(await client.send(item))
        if number % 256 == 0:
            await client.drain()
    await client.drain()
    return futures


async def test_every_message_arrives_byte_exact_and_in_order(rsyslog: Rsyslog) -> None:
    messages = awkward_messages(2000)
    assert len(messages[1000]) > 100 * 1024 and max(map(len, messages)) < MAX_MESSAGE_SIZE

    client = await RelpClient.open(HOST, rsyslog.ports["relp"])
    futures = await send_all(client, messages)
    await asyncio.wait_for(asyncio.gather(*futures), timeout=30)
    assert client.unacknowledged() == 0
    await client.close()

    assert client.lost is None
    assert rsyslog.lines("relp") == messages  # acknowledged means written: no waiting
    assert rsyslog.lines("relp_tls") == []


async def test_relp_over_mutual_tls(rsyslog: Rsyslog) -> None:
    messages = awkward_messages(50)
    client = await RelpClient.open(
        HOST,
        rsyslog.ports["relp_tls"],
        ssl=relp_tls_context(rsyslog),
        server_hostname="localhost",
    )
    futures = await send_all(client, messages)
    await asyncio.wait_for(asyncio.gather(*futures), timeout=30)
    await client.close()

    assert rsyslog.lines("relp_tls") == messages
    assert rsyslog.lines("relp") == []


async def test_relp_over_tls_refuses_a_server_from_another_ca(
    rsyslog: Rsyslog, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(other_ca)
    port = rsyslog.ports["relp_tls"]

    with pytest.raises(RelpError) as caught:
        await RelpClient.open(
            HOST,
            port,
            ssl=relp_tls_context(rsyslog, other_ca),
            server_hostname="localhost",
            connect_timeout=5,
        )

    text = str(caught.value)
    assert f"{HOST}:{port}" in text and "certificate verification failed" in text, text
    assert caught.value.retriable is False
    assert rsyslog.lines("relp_tls") == []


async def test_relp_over_tls_without_client_certificate_is_refused(rsyslog: Rsyslog) -> None:
    port = rsyslog.ports["relp_tls"]
    context = ssl.create_default_context(cafile=str(rsyslog.ca_pem))  # trusts, shows nothing

    with pytest.raises(RelpError, match=f"^RELP {HOST}:{port}: "):
        await RelpClient.open(HOST, port, ssl=context, server_hostname="localhost")
    assert rsyslog.lines("relp_tls") == []


async def test_relp_over_tls_checks_the_server_name(rsyslog: Rsyslog) -> None:
    with pytest.raises(RelpError, match="certificate verification failed.*mismatch"):
        await RelpClient.open(
            HOST,
            rsyslog.ports["relp_tls"],
            ssl=relp_tls_context(rsyslog),
            server_hostname="somebody-else.example",
        )


async def test_restart_loses_the_session_and_resending_the_failures_delivers_all(
    rsyslog: Rsyslog,
) -> None:
    messages = [message(n) for n in range(20_000)]
    window = 128
    client = await RelpClient.open(HOST, rsyslog.ports["relp"], window=window)
    futures: list[asyncio.Future[None]] = []
    resolved = 0
    halfway_there = asyncio.Event()

    def count(future: asyncio.Future[None]) -> None:
        nonlocal resolved
        if not future.cancelled() and future.exception() is None:
            resolved += 1
            if resolved == 3000:
                halfway_there.set()

    async def stream() -> None:
        for item in messages:
            try:
                future = await client.send(item)
            except RelpError:
                return  # the session is lost: the rest was never sent
            future.add_done_callback(count)
            futures.append(future)

    sender = asyncio.create_task(stream())
    await asyncio.wait_for(halfway_there.wait(), timeout=20)
    # Stopped from a worker thread so the client keeps sending while rsyslogd shuts down;
    # started from this thread, which rsyslogd's life is tied to (see Rsyslog).
    await asyncio.to_thread(rsyslog.stop)
    rsyslog.start()
    await asyncio.wait_for(sender, timeout=20)
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 20)

    assert client.lost is not None, "the restart went unnoticed"
    assert len(futures) < len(messages), "the whole stream went through before the restart"
    acknowledged = sum(result is None for result in results)
    # rsyslog answers in order: the acknowledged ones are exactly the first ones.
    assert results[:acknowledged] == [None] * acknowledged
    failures = results[acknowledged:]
    assert all(isinstance(f, RelpError) and "lost" in str(f) for f in failures), failures[:3]
    assert len(failures) <= window
    first_run = rsyslog.lines("relp")
    assert first_run[:acknowledged] == messages[:acknowledged]  # acknowledged means written
    await client.close()

    again = await RelpClient.open(HOST, rsyslog.ports["relp"], window=window)
    await asyncio.wait_for(asyncio.gather(*await send_all(again, messages[acknowledged:])), 30)
    await again.close()

    # What rsyslog wrote: the first run's messages in order (the acknowledged ones, perhaps a
    # few whose answers were lost with the connection), then everything re-sent, in order.
    output = rsyslog.lines("relp")
    written_before = len(output) - (len(messages) - acknowledged)
    assert acknowledged <= written_before <= acknowledged + window
    assert output == messages[:written_before] + messages[acknowledged:]
    assert set(output) == set(messages)


async def test_window_is_never_exceeded(rsyslog: Rsyslog) -> None:
    window = 8
    messages = [message(n) for n in range(1000)]
    client = await RelpClient.open(HOST, rsyslog.ports["relp"], window=window)
    seen: list[int] = []
    futures = []
    for item in messages:
        futures.append(await client.send(item))
        seen.append(client.unacknowledged())
    await client.drain()
    await asyncio.wait_for(asyncio.gather(*futures), timeout=20)
    await client.close()

    assert max(seen) == window  # reached (sending outpaces the answers), never passed
    assert rsyslog.lines("relp") == messages


async def test_open_against_a_closed_port_fails_fast() -> None:
    # A socket bound but not listening: connecting to it is refused, and nobody can take
    # the port while we hold it.
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        port = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RelpError, match=f"^RELP {HOST}:{port}: connection refused$"):
            await RelpClient.open(HOST, port, connect_timeout=5)
        assert time.monotonic() - started < 1
