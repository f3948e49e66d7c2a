"""WebhookSink against real aiohttp servers over TLS (trustme), on loopback only.

Every name resolves through a fake resolver to 127.0.0.1, so TLS verifies the real host name
(``webhook.test``) while the SSRF guard is told to let 127.0.0.0/8 through; the SSRF tests use
the default settings, where loopback is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from prometheus_client import CollectorRegistry
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connectors.health import DestinationHealth
from connectors.webhook.config import WebhookSettings
from connectors.webhook.sink import WebhookSink
from connectors.webhook.transport import WebhookTransport
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError
from tests.process_support import free_port
from tests.spec_example import SPEC_EXAMPLE
from tests.webhook_support import (
    HOST,
    Hit,
    LoopbackResolver,
    Receiver,
    Rig,
    again,
    envelope,
    envelopes,
    hook,
    replies,
    server_tls,
    write_destinations,
)

pytestmark = pytest.mark.component

TENANT = SPEC_EXAMPLE["tenant_id"]
OTHER = "tnt_other0001"
LOOPBACK_OK = WebhookSettings.model_validate({"allowed_networks": ["127.0.0.0/8"]})
SECRET_A = "whsec_" + base64.b64encode(bytes(range(32))).decode()
SECRET_B = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
BEARER = "Bearer S3CRET-HEADER-VALUE-5d1e"
API_KEY = "S3CRET-API-KEY-0c2a"
SPLUNK_TOKEN = "S3CRET-SPLUNK-TOKEN-77c1"  # noqa: S105 - a marker to look for, not a credential
QUERY = "apikey=S3CRET-QUERY-9e4b"  # a secret in the URL: endpoints leave the query out
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ALERT_KEYS = "type version tenant_id method endpoint state reason since at consecutive_failures"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


ServeFn = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def serve(ca: trustme.CA) -> AsyncIterator[ServeFn]:
    """Start receivers (TLS for webhook.test unless ``tls=None``); all stop at teardown."""
    started: list[Receiver] = []

    async def start(tls: ssl.SSLContext | None | bool = True, **kwargs: Any) -> Receiver:
        context = server_tls(ca) if tls is True else (tls or None)
        receiver = await Receiver(context, **kwargs).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(serve: ServeFn) -> Receiver:
    return await serve()


RigFn = Callable[..., Rig]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFn]:
    """``make_rig(tenants, settings)``: a sink over a destinations file with ``tenants``."""
    sinks: list[WebhookSink] = []

    def make(tenants: Mapping[str, Any], settings: WebhookSettings = LOOPBACK_OK) -> Rig:
        alerts: list[tuple[str, bytes]] = []
        health = DestinationHealth(
            "webhook",
            settings.health,
            lambda tenant, record: alerts.append((tenant, record)),
            registry=CollectorRegistry(),
        )
        transport = WebhookTransport(settings, inner_resolver=LoopbackResolver())
        dests = write_destinations(tmp_path, tenants)
        registry = CollectorRegistry()
        sink = WebhookSink(settings, dests, health, transport=transport, registry=registry)
        sinks.append(sink)
        return Rig(sink, dests, registry, alerts)

    yield make
    for sink in sinks:
        await sink.close()


@pytest.fixture
def one(make_rig: RigFn, receiver: Receiver, ca_bundle: Path) -> Rig:
    """TENANT → the receiver's /in, one event per request."""
    return make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle)})


@pytest.fixture
def spec_env() -> Envelope:
    return envelope(SPEC_EXAMPLE)


# --- 2xx and what a request looks like ------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_acknowledges_with_the_spec_json_and_custom_headers(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path, spec_env: Envelope, status: int
) -> None:
    headers = {"Authorization": BEARER, "X-Api-Key": API_KEY}
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle, headers=headers)})
    receiver.answer = replies(status)
    assert await rig.sink.send(TENANT, [spec_env]) is None
    [hit] = receiver.hits
    assert hit.body == spec_env.json
    assert json.loads(hit.body) == SPEC_EXAMPLE
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["Authorization"] == BEARER
    assert hit.headers["X-Api-Key"] == API_KEY
    assert "webhook-signature" not in {k.lower() for k in hit.headers}  # no secret, no signing
    assert rig.alerts == []
    assert rig.metric("siem_export_webhook_requests_total", result="2xx") == 1


@pytest.mark.parametrize("status", [301, 304, 400, 403, 404, 409, 418, 422, 500, 502, 504])
async def test_non_2xx_never_acknowledges(
    one: Rig, receiver: Receiver, spec_env: Envelope, status: int
) -> None:
    receiver.answer = replies(then=status)
    error = await one.fail(TENANT, [spec_env])
    assert f"HTTP {status}" in str(error)
    assert len(receiver.hits) == 1


# --- signatures -----------------------------------------------------------------------------


async def test_every_request_verifies_and_retries_keep_the_webhook_id(
    make_rig: RigFn, serve: ServeFn, ca_bundle: Path
) -> None:
    receiver = await serve(verifier=Webhook(SECRET_A), answer=replies(500))
    rig = make_rig(
        {
            TENANT: hook(f"{receiver.base}/in", ca_bundle, signing_secret=SECRET_A),
            OTHER: hook(
                f"{receiver.base}/batch",
                ca_bundle,
                signing_secret=SECRET_A,
                max_events_per_request=3,
            ),
        }
    )
    [env] = envelopes(TENANT, 1)
    assert (await rig.fail(TENANT, [env])).retriable  # first attempt: 500
    assert await rig.sink.send(TENANT, again([env])) is None  # the retry
    batch = envelopes(OTHER, 3, seed=2)
    assert await rig.sink.send(OTHER, batch) is None
    assert receiver.bad_signatures == 0
    first, retry, batched = receiver.hits
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == env.restore()["event_id"]
    assert first.body == retry.body == env.json
    assert batched.headers["webhook-id"].startswith("batch_")
    with pytest.raises(WebhookVerificationError):  # the check is not vacuous
        Webhook(SECRET_B).verify(first.body, first.headers)


async def test_rotation_signs_with_every_secret(
    make_rig: RigFn, serve: ServeFn, ca_bundle: Path
) -> None:
    receiver = await serve(verifier=Webhook(SECRET_B))  # knows only the new secret
    secrets = [SECRET_A, SECRET_B]
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle, signing_secret=secrets)})
    [env] = envelopes(TENANT, 1)
    assert await rig.sink.send(TENANT, [env]) is None
    assert receiver.bad_signatures == 0
    [hit] = receiver.hits
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET_A).verify(hit.body, hit.headers) == json.loads(env.json)


# --- transient failures ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 408, 502, 503])
async def test_transient_statuses_are_retriable(
    one: Rig, receiver: Receiver, spec_env: Envelope, status: int
) -> None:
    receiver.answer = replies(status)
    error = await one.fail(TENANT, [spec_env])
    assert error.retriable
    assert error.retry_after is None
    assert one.alerts == []  # one failure is below the failing threshold


async def test_429_retry_after_seconds(one: Rig, receiver: Receiver, spec_env: Envelope) -> None:
    receiver.answer = replies(web.Response(status=429, headers={"Retry-After": "7"}))
    error = await one.fail(TENANT, [spec_env])
    assert error.retriable
    assert error.retry_after == 7


async def test_503_retry_after_http_date(one: Rig, receiver: Receiver, spec_env: Envelope) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    receiver.answer = replies(web.Response(status=503, headers={"Retry-After": when}))
    error = await one.fail(TENANT, [spec_env])
    assert error.retriable
    assert error.retry_after == pytest.approx(30, abs=2)


async def test_timeout_is_retriable(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path, spec_env: Envelope
) -> None:
    settings = LOOPBACK_OK.model_copy(update={"timeout_seconds": 0.5})
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle)}, settings)
    receiver.answer = receiver.hold
    error = await rig.fail(TENANT, [spec_env])
    assert error.retriable
    assert "timeout" in str(error)
    assert len(receiver.hits) == 1
    assert rig.metric("siem_export_webhook_requests_total", result="no_answer") == 1


async def test_connection_refused_is_retriable(
    make_rig: RigFn, ca_bundle: Path, spec_env: Envelope
) -> None:
    rig = make_rig({TENANT: hook(f"https://webhook.test:{free_port()}/in", ca_bundle)})
    error = await rig.fail(TENANT, [spec_env])
    assert error.retriable
    assert "connection failed" in str(error)


# --- 410, 401, redirects --------------------------------------------------------------------


async def test_410_disables_until_the_destination_changes(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path, spec_env: Envelope, tmp_path: Path
) -> None:
    rig = make_rig({TENANT: hook(f"{receiver.base}/gone?token=q", ca_bundle)})
    endpoint = f"{receiver.base}/gone"
    receiver.answer = replies(410)
    error = await rig.fail(TENANT, [spec_env])
    assert not error.retriable
    assert error.retry_after == LOOPBACK_OK.disabled_retry_seconds
    assert rig.sink.health.state(TENANT, endpoint) == "disabled"
    [record] = rig.records()
    assert list(record) == ALERT_KEYS.split()
    assert record["tenant_id"] == TENANT
    assert record["method"] == "webhook"
    assert record["endpoint"] == endpoint
    assert record["state"] == "disabled"
    assert "410" in record["reason"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["since"])

    error = await rig.fail(TENANT, again([spec_env]))  # no request while disabled
    assert not error.retriable
    assert "disabled" in str(error)
    assert len(receiver.hits) == 1
    assert len(rig.alerts) == 1

    new = write_destinations(tmp_path, {TENANT: hook(f"{receiver.base}/v2", ca_bundle)})
    rig.sink.update_destinations(rig.dests, new)
    assert rig.states() == ["disabled", "recovered"]
    assert rig.records()[1]["endpoint"] == f"{receiver.base}/v2"
    assert await rig.sink.send(TENANT, again([spec_env])) is None
    assert [hit.path for hit in receiver.hits] == ["/gone", "/v2"]


async def test_401_alerts_at_once_and_recovers(
    one: Rig, receiver: Receiver, spec_env: Envelope
) -> None:
    receiver.answer = replies(401)
    error = await one.fail(TENANT, [spec_env])
    assert not error.retriable
    assert "HTTP 401" in str(error)
    assert one.states() == ["failing"]
    assert "401" in one.records()[0]["reason"]
    assert await one.sink.send(TENANT, again([spec_env])) is None
    assert one.states() == ["failing", "recovered"]


async def test_redirects_are_not_followed(
    one: Rig, receiver: Receiver, serve: ServeFn, spec_env: Envelope
) -> None:
    target = await serve()
    location = f"{target.base}/landing"
    receiver.answer = replies(web.Response(status=302, headers={"Location": location}))
    error = await one.fail(TENANT, [spec_env])
    assert not error.retriable
    assert "redirect" in str(error)
    assert one.states() == ["failing"]
    assert "redirect" in one.records()[0]["reason"]
    assert target.hits == []


# --- 413 and batching -----------------------------------------------------------------------


async def too_large_over_two(hit: Hit) -> web.StreamResponse:
    return web.Response(status=413 if len(hit.events()) > 2 else 204)


async def test_413_halves_the_request_in_order(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path
) -> None:
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle, max_events_per_request=8)})
    receiver.answer = too_large_over_two
    batch = envelopes(TENANT, 10)
    # What the engine decodes into a lane's batch follows the request size (Sink.batch_limit).
    assert rig.sink.batch_limit(TENANT) == 8
    assert await rig.sink.send(TENANT, batch) == SendResult(settled=2)
    assert rig.sink.batch_limit(TENANT) == 2
    assert [len(hit.events()) for hit in receiver.hits] == [8, 4, 2]
    ids = [env.restore()["event_id"] for env in batch]
    assert [[e["event_id"] for e in hit.events()] for hit in receiver.hits] == [
        ids[:8],
        ids[:4],
        ids[:2],
    ]
    assert rig.metric("siem_export_webhook_batch_splits_total") == 2
    # The endpoint's batch size stays halved: the rest goes two at a time at once.
    assert await rig.sink.send(TENANT, again(batch[2:])) == SendResult(settled=2)
    assert [e["event_id"] for e in receiver.hits[-1].events()] == ids[2:4]
    assert rig.alerts == []


async def test_the_events_of_a_request_are_freed_once_encoded(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path
) -> None:
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle, max_events_per_request=2)})
    receiver.answer = replies(503, then=204)
    batch = envelopes(TENANT, 3)
    expected = [env.restore()["event_id"] for env in batch]
    error = await rig.fail(TENANT, batch)
    assert error.retriable
    # The two events the request carried were released; the third was not taken.
    assert [env.event == {} for env in batch] == [True, True, False]
    assert await rig.sink.send(TENANT, again(batch)) == SendResult(settled=2)
    first, retry = receiver.hits
    assert first.body == retry.body
    assert [e["event_id"] for e in retry.events()] == expected[:2]


async def test_413_of_a_single_event_rejects_it(
    one: Rig, receiver: Receiver, spec_env: Envelope
) -> None:
    receiver.answer = replies(then=413)
    result = await one.sink.send(TENANT, [spec_env, *envelopes(TENANT, 2)])
    assert result is not None
    assert result.settled == 1
    assert list(result.rejected) == [0]
    assert "413" in result.rejected[0]
    assert len(receiver.hits) == 1
    assert one.alerts == []


@pytest.mark.parametrize(
    ("encoding", "content_type"),
    [("json_array", "application/json"), ("ndjson", "application/x-ndjson")],
)
async def test_a_backlog_goes_max_events_per_request_at_a_time(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path, encoding: str, content_type: str
) -> None:
    options = {"max_events_per_request": 10, "batch_encoding": encoding}
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle, **options)})
    batch = envelopes(TENANT, 25)
    assert await rig.sink.send(TENANT, batch) == SendResult(settled=10)
    [hit] = receiver.hits
    assert hit.headers["Content-Type"] == content_type
    if encoding == "json_array":
        assert hit.body == b"[" + b",".join(env.json for env in batch[:10]) + b"]"
    else:
        assert hit.body.splitlines() == [env.json for env in batch[:10]]
        assert hit.body.endswith(b"\n")


async def test_a_lone_event_is_an_array_of_one_when_batching(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path, spec_env: Envelope
) -> None:
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", ca_bundle, max_events_per_request=10)})
    assert await rig.sink.send(TENANT, [spec_env]) is None
    assert receiver.hits[0].body == b"[" + spec_env.json + b"]"


# --- Splunk HEC -----------------------------------------------------------------------------


async def test_splunk_hec_envelopes(make_rig: RigFn, receiver: Receiver, ca_bundle: Path) -> None:
    splunk = {"token": SPLUNK_TOKEN, "index": "audit"}
    options = {"format": "splunk_hec", "splunk": splunk, "max_events_per_request": 5}
    rig = make_rig({TENANT: hook(f"{receiver.base}/services/collector", ca_bundle, **options)})
    batch = envelopes(TENANT, 4)
    assert await rig.sink.send(TENANT, batch[:3]) is None
    assert await rig.sink.send(TENANT, batch[3:]) is None
    first, second = receiver.hits
    assert first.headers["Authorization"] == f"Splunk {SPLUNK_TOKEN}"
    channel = first.headers["X-Splunk-Request-Channel"]
    assert GUID.fullmatch(channel)
    assert second.headers["X-Splunk-Request-Channel"] == channel
    assert first.headers["Content-Type"] == "application/json"
    lines = first.body.split(b"\n") + second.body.split(b"\n")
    assert len(lines) == len(batch)
    for line, env in zip(lines, batch, strict=True):
        time_text = re.match(rb'\{"time":(\d+\.\d{3}),', line)
        assert time_text is not None
        stamp = datetime.fromisoformat(env.restore()["timestamp"].replace("Z", "+00:00"))
        assert float(time_text[1]) == pytest.approx(stamp.timestamp(), abs=1e-6)
        assert line.endswith(b',"event":' + env.json + b"}")
        hec = json.loads(line)
        assert list(hec) == ["time", "host", "source", "sourcetype", "index", "event"]
        assert (hec["host"], hec["source"], hec["sourcetype"]) == ("zaita", "zaita:audit", "_json")
        assert hec["index"] == "audit"
        assert hec["event"] == json.loads(env.json)


# --- SSRF guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("localhost", "localhost resolves to 127.0.0.1, a loopback address"),
    ],
)
async def test_loopback_is_refused_by_default(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path, spec_env: Envelope, host: str, reason: str
) -> None:
    url = f"https://{host}:{receiver.port}/in?token=q"
    rig = make_rig({TENANT: hook(url, ca_bundle)}, WebhookSettings())
    error = await rig.fail(TENANT, [spec_env])
    assert not error.retriable
    assert reason in str(error)
    assert "token=q" not in str(error)
    assert receiver.hits == []
    assert rig.states() == ["failing"]
    assert reason in rig.records()[0]["reason"]
    assert rig.metric("siem_export_webhook_requests_total", result="refused") == 1


async def test_plain_http_needs_allow_http(
    make_rig: RigFn, serve: ServeFn, spec_env: Envelope
) -> None:
    plain = await serve(tls=None)
    url = f"{plain.base}/in"
    assert url.startswith("http://")
    refused = make_rig({TENANT: hook(url, None)})
    error = await refused.fail(TENANT, [spec_env])
    assert not error.retriable
    assert "scheme 'http'" in str(error)
    assert plain.hits == []
    allowed = make_rig(
        {TENANT: hook(url, None)}, LOOPBACK_OK.model_copy(update={"allow_http": True})
    )
    assert await allowed.sink.send(TENANT, [spec_env]) is None
    assert len(plain.hits) == 1


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture
async def mtls_receiver(serve: ServeFn, ca: trustme.CA) -> Receiver:
    return await serve(tls=server_tls(ca, client_ca=ca))


async def test_mtls_with_a_client_certificate(
    make_rig: RigFn,
    mtls_receiver: Receiver,
    ca: trustme.CA,
    ca_bundle: Path,
    spec_env: Envelope,
    tmp_path: Path,
) -> None:
    client = ca.issue_cert("client.test")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    for number, pem in enumerate(client.cert_chain_pems):
        pem.write_to_path(str(cert), append=number > 0)
    client.private_key_pem.write_to_path(str(key))
    url = f"{mtls_receiver.base}/in"
    rig = make_rig({TENANT: hook(url, ca_bundle, client_cert=cert, client_key=key)})
    assert await rig.sink.send(TENANT, [spec_env]) is None
    assert len(mtls_receiver.hits) == 1


async def test_mtls_without_a_client_certificate_fails(
    make_rig: RigFn, mtls_receiver: Receiver, ca_bundle: Path, spec_env: Envelope
) -> None:
    rig = make_rig({TENANT: hook(f"{mtls_receiver.base}/in", ca_bundle)})
    error = await rig.fail(TENANT, [spec_env])
    assert error.retriable
    assert re.search(r"TLS failure|connection failed", str(error))
    assert mtls_receiver.hits == []


async def test_tls_is_verified_by_default(
    make_rig: RigFn, receiver: Receiver, spec_env: Envelope
) -> None:
    rig = make_rig({TENANT: hook(f"{receiver.base}/in", None)})  # system trust store only
    error = await rig.fail(TENANT, [spec_env])
    assert error.retriable
    assert "TLS failure" in str(error)
    assert "certificate verify failed" in str(error)
    assert receiver.hits == []


# --- routing --------------------------------------------------------------------------------


async def test_unrouted_tenants_are_acknowledged_without_a_request(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path
) -> None:
    rig = make_rig({OTHER: hook(f"{receiver.base}/in", ca_bundle)})
    assert rig.sink.batch_limit(TENANT) == rig.sink.max_batch  # acknowledged in bulk
    assert rig.sink.batch_limit(OTHER) == 1  # one event per request by default
    assert await rig.sink.send(TENANT, envelopes(TENANT, 3)) is None
    assert receiver.hits == []
    assert rig.metric("siem_export_webhook_unrouted_events_total") == 3


async def test_the_default_entry_routes_other_tenants(
    make_rig: RigFn, receiver: Receiver, ca_bundle: Path
) -> None:
    opted_out = "tnt_optout01"
    rig = make_rig(
        {
            "*": hook(f"{receiver.base}/default", ca_bundle),
            opted_out: {"syslog": {"host": "siem.invalid", "port": 6514}},
        }
    )
    assert await rig.sink.send(TENANT, envelopes(TENANT, 1)) is None
    assert await rig.sink.send(OTHER, envelopes(OTHER, 1)) is None
    assert await rig.sink.send(opted_out, envelopes(opted_out, 2)) is None
    assert [(hit.path, hit.events()[0]["tenant_id"]) for hit in receiver.hits] == [
        ("/default", TENANT),
        ("/default", OTHER),
    ]
    assert rig.metric("siem_export_webhook_unrouted_events_total") == 2


# --- secrets --------------------------------------------------------------------------------


async def test_secrets_never_reach_errors_alerts_or_logs(
    make_rig: RigFn,
    serve: ServeFn,
    receiver: Receiver,
    ca_bundle: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": BEARER, "X-Api-Key": API_KEY}
    splunk = {"format": "splunk_hec", "splunk": {"token": SPLUNK_TOKEN}}
    generic = {"headers": headers, "signing_secret": [SECRET_A, SECRET_B]}
    untrusted = await serve()
    rig = make_rig(
        {
            TENANT: hook(f"{receiver.base}/in?{QUERY}", ca_bundle, **generic),
            OTHER: hook(f"{receiver.base}/hec?{QUERY}", ca_bundle, **splunk),
            "tnt_tls": hook(f"{untrusted.base}/in?{QUERY}", None, **generic),
            "tnt_down": hook(f"https://{HOST}:{free_port()}/in?{QUERY}", ca_bundle, **splunk),
        }
    )
    receiver.answer = replies(401, 401, 500, 500, 302, 302, 410, 410)
    errors: list[SinkError] = []
    for tenant in (TENANT, OTHER) * 4 + ("tnt_tls", "tnt_down"):
        errors.append(await rig.fail(tenant, envelopes(tenant, 1)))
    assert len(receiver.hits) == 8
    assert receiver.hits[0].headers["Authorization"] == BEARER  # the secrets were in play
    assert receiver.hits[1].headers["Authorization"] == f"Splunk {SPLUNK_TOKEN}"
    assert receiver.hits[0].query == QUERY
    assert {"failing", "disabled"} <= set(rig.states())

    texts = [f"{e!s} {e!r}" for e in errors] + [record.decode() for _, record in rig.alerts]
    texts += [f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records]
    assert any("Destination" in text for text in texts)  # the health logs were captured
    secrets = [BEARER, API_KEY, SPLUNK_TOKEN, SECRET_A, SECRET_B, QUERY]
    secrets += [s.removeprefix("whsec_") for s in (SECRET_A, SECRET_B)]
    for secret in secrets:
        assert not [text for text in texts if secret in text], secret


async def test_many_tenants_share_a_bounded_keep_alive_pool_per_host(
    serve: ServeFn, make_rig: RigFn, ca_bundle: Path
) -> None:
    active = 0
    peak = 0

    async def slow(hit: Hit) -> web.StreamResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(status=204)

    receiver = await serve(answer=slow)
    settings = LOOPBACK_OK.model_copy(update={"max_connections_per_host": 4})
    tenants = [f"tnt_pool{i:02d}" for i in range(40)]
    rig = make_rig({"*": hook(f"{receiver.base}/in", ca_bundle)}, settings)
    for _ in range(3):  # three rounds: later rounds reuse the kept-alive connections
        results = await asyncio.gather(
            *(rig.sink.send(t, envelopes(t, 1, seed=i)) for i, t in enumerate(tenants))
        )
        assert results == [None] * len(tenants)
    assert len(receiver.hits) == 3 * len(tenants)
    assert peak <= 4
    peers = {hit.peer for hit in receiver.hits}
    assert len(peers) <= 4, f"{len(peers)} sockets for one host"


async def test_senders_take_fair_turns_for_a_small_pool_and_none_times_out(
    serve: ServeFn, make_rig: RigFn, ca_bundle: Path
) -> None:
    async def brief(hit: Hit) -> web.StreamResponse:
        await asyncio.sleep(0.01)
        return web.Response(status=204)

    receiver = await serve(answer=brief)
    # 100 lanes re-sending at once through 2 connections: a turn comes every ~0.5 s, well
    # inside the 2 s timeout, but only if turns are fair (a lane that re-sends at once must
    # not keep winning a released connection while another waits).
    settings = LOOPBACK_OK.model_copy(
        update={"max_connections_per_host": 2, "timeout_seconds": 2.0}
    )
    rig = make_rig({"*": hook(f"{receiver.base}/in", ca_bundle)}, settings)

    async def lane(number: int) -> int:
        tenant = f"tnt_fair{number:03d}"
        for env in envelopes(tenant, 5, seed=number):
            assert await rig.sink.send(tenant, [env]) is None
        return 5

    assert sum(await asyncio.gather(*(lane(n) for n in range(100)))) == 500
    assert len(receiver.hits) == 500
