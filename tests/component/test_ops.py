"""The ops endpoints over real HTTP: metrics exposition, liveness, readiness, clean shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_LATEST
from pydantic import ValidationError

from connectors.ops import OpsConfig, OpsServer
from streams.engine import EngineHealth

pytestmark = pytest.mark.component

LOCAL = OpsConfig(host="127.0.0.1", port=0)


class FakeEngine:
    """Stands in for ``Engine.health``; tests flip its fields."""

    def __init__(self) -> None:
        self.state = EngineHealth(
            live=True,
            ready=False,
            poll_age_seconds=0.2,
            partitions=[],
            stalled=[],
            buffered_events=0,
            in_flight_events=0,
            stopping=False,
        )
        self.raises = False

    def set(self, **changes: object) -> None:
        self.state = dataclasses.replace(self.state, **changes)  # type: ignore[arg-type]

    def health(self) -> EngineHealth:
        if self.raises:
            raise RuntimeError("password=hunter2")
        return self.state


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    delivered = Counter(
        "siem_export_test_delivered", "Events delivered.", ["sink"], registry=registry
    )
    delivered.labels("webhook").inc(3)
    Gauge("siem_export_test_open", "Files open.", registry=registry).set(7)
    return registry


@pytest.fixture
async def server(engine: FakeEngine, registry: CollectorRegistry) -> AsyncIterator[OpsServer]:
    async with OpsServer(engine.health, registry, LOCAL) as ops:
        yield ops


@pytest.fixture
async def http(server: OpsServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
        yield session


async def get(http: aiohttp.ClientSession, path: str, **headers: str) -> tuple[int, str, str]:
    async with http.get(path, headers=headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def get_json(http: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, object]]:
    async with http.get(path) as resp:
        return resp.status, await resp.json()


# ---------------------------------------------------------------------- /metrics


async def test_metrics_text_exposition(http: aiohttp.ClientSession) -> None:
    status, content_type, text = await get(http, "/metrics")
    assert status == 200
    # Without an Accept header prometheus_client answers the classic text format.
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    assert 'siem_export_test_delivered_total{sink="webhook"} 3.0' in text
    assert "# TYPE siem_export_test_delivered_total counter" in text


async def test_metrics_restricted_to_the_names_asked_for(http: aiohttp.ClientSession) -> None:
    status, _, text = await get(http, "/metrics?name[]=siem_export_test_open")
    assert status == 200
    assert "siem_export_test_open 7.0" in text
    assert "delivered" not in text
    _, _, both = await get(
        http, "/metrics?name[]=siem_export_test_open&name[]=siem_export_test_delivered_total"
    )
    assert "siem_export_test_open 7.0" in both
    assert 'siem_export_test_delivered_total{sink="webhook"} 3.0' in both
    _, _, unknown = await get(http, "/metrics?name[]=no_such_series")
    assert "siem_export" not in unknown


async def test_metrics_text_1_0_0_when_asked(http: aiohttp.ClientSession) -> None:
    accept = "text/plain;version=1.0.0;escaping=underscores"
    status, content_type, text = await get(http, "/metrics", Accept=accept)
    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST + "; escaping=underscores"
    assert 'siem_export_test_delivered_total{sink="webhook"} 3.0' in text


async def test_metrics_openmetrics_when_asked(http: aiohttp.ClientSession) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, content_type, text = await get(http, "/metrics", Accept=accept)
    assert status == 200
    assert content_type.startswith(OPENMETRICS_LATEST)
    assert 'siem_export_test_delivered_total{sink="webhook"} 3.0' in text
    assert text.endswith("# EOF\n")


async def test_metrics_reflect_later_increments(
    http: aiohttp.ClientSession, registry: CollectorRegistry
) -> None:
    extra = Counter("siem_export_test_retried", "Retries.", registry=registry)
    extra.inc()
    _, _, text = await get(http, "/metrics")
    assert "siem_export_test_retried_total 1.0" in text


# ---------------------------------------------------------------------- /healthz


async def test_healthz_ok_then_unhealthy_when_poll_stops(
    http: aiohttp.ClientSession, engine: FakeEngine
) -> None:
    status, body = await get_json(http, "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["poll_age_seconds"] == 0.2

    engine.set(live=False, poll_age_seconds=151.25)
    status, body = await get_json(http, "/healthz")
    assert status == 503
    assert body["status"] == "unhealthy"
    assert "151.2" in str(body["reason"])
    assert "poll" in str(body["reason"])
    assert body["poll_age_seconds"] == 151.25


async def test_health_callable_raising_is_a_503_without_its_message(
    http: aiohttp.ClientSession, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.raises = True
    for path in ("/healthz", "/readyz"):
        status, _, text = await get(http, path)
        assert status == 503
        assert "unhealthy" in text
        assert "hunter2" not in text
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- /readyz


async def test_readyz_follows_assignment_and_stopping(
    http: aiohttp.ClientSession, engine: FakeEngine
) -> None:
    status, body = await get_json(http, "/readyz")
    assert status == 503
    assert body["reason"] == "no partitions assigned yet"
    assert body["partitions"] == []

    engine.set(ready=True, partitions=[0, 2], stalled=[2], buffered_events=7, in_flight_events=3)
    status, body = await get_json(http, "/readyz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["partitions"] == [0, 2]
    assert body["stalled"] == [2]
    assert body["buffered_events"] == 7
    assert body["in_flight_events"] == 3

    engine.set(ready=False, stopping=True)
    status, body = await get_json(http, "/readyz")
    assert status == 503
    assert body["reason"] == "stopping"
    assert body["stopping"] is True


async def test_readyz_not_live_names_the_poll_age(
    http: aiohttp.ClientSession, engine: FakeEngine
) -> None:
    engine.set(live=False, ready=False, poll_age_seconds=99.0, partitions=[1])
    status, body = await get_json(http, "/readyz")
    assert status == 503
    assert "99.0" in str(body["reason"])


async def test_bodies_publish_only_the_listed_fields(http: aiohttp.ClientSession) -> None:
    _, body = await get_json(http, "/healthz")
    assert set(body) == {
        "status",
        "live",
        "ready",
        "stopping",
        "poll_age_seconds",
        "partitions",
        "stalled",
        "buffered_events",
        "in_flight_events",
    }


# ---------------------------------------------------------------------- routing, lifecycle


async def test_unknown_path_is_404(http: aiohttp.ClientSession) -> None:
    status, _, _ = await get(http, "/nope")
    assert status == 404


async def test_post_is_not_allowed(http: aiohttp.ClientSession) -> None:
    async with http.post("/metrics") as resp:
        assert resp.status == 405


async def test_start_logs_and_stop_closes_the_port(
    engine: FakeEngine, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.ops")
    ops = OpsServer(engine.health, registry, LOCAL)
    assert ops.port is None
    await ops.start()
    port = ops.port
    assert port is not None and port > 0
    started = [r for r in caplog.records if r.getMessage() == "Ops endpoints listening."]
    assert len(started) == 1
    assert started[0].__dict__["port"] == port

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        await ops.stop()
        await ops.stop()  # idempotent
        assert ops.port is None
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"http://127.0.0.1:{port}/healthz"):
                pass

    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()


async def test_start_twice_is_refused(engine: FakeEngine, registry: CollectorRegistry) -> None:
    async with OpsServer(engine.health, registry, LOCAL) as ops:
        with pytest.raises(RuntimeError):
            await ops.start()


async def test_port_in_use_raises_and_leaves_nothing_running(
    server: OpsServer, engine: FakeEngine, registry: CollectorRegistry
) -> None:
    assert server.port is not None
    clash = OpsServer(engine.health, registry, OpsConfig(host="127.0.0.1", port=server.port))
    with pytest.raises(OSError):
        await clash.start()
    assert clash.port is None
    await clash.stop()


async def test_disabled_serves_nothing(engine: FakeEngine, registry: CollectorRegistry) -> None:
    async with OpsServer(engine.health, registry, OpsConfig(port=0, enabled=False)) as ops:
        assert ops.port is None


# ---------------------------------------------------------------------- config


def test_config_defaults_and_validation() -> None:
    cfg = OpsConfig()
    assert (cfg.host, cfg.port, cfg.enabled) == ("127.0.0.1", 9400, True)
    with pytest.raises(ValidationError):
        OpsConfig(port=70000)
    with pytest.raises(ValidationError):
        OpsConfig(port=-1)
    with pytest.raises(ValidationError):
        OpsConfig(bind="127.0.0.2")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        cfg.port = 1
